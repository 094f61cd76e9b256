"""The Celery canvas for one chunk (see DESIGN.md):

    chord(group(ocr(chunk), caption(chunk, m) for m in captioners, vqa(chunk)), compose(chunk))
        | generate

Header tasks get a slim copy of the chunk (ids, image URIs, questions) so little crosses
the broker; ``compose`` gets the full chunk.
"""
from __future__ import annotations

from celery import chord

from workers import tasks


def slim(chunk: dict, *, questions: bool = False) -> dict:
    keep = ("id", "image", "error") + (("questions",) if questions else ())
    return {"batch": chunk["batch"], "chunk": chunk["chunk"], "spec": chunk["spec"],
            "items": [{k: it[k] for k in keep if it.get(k)} for it in chunk["items"]]}


def chunk_canvas(chunk: dict):
    spec = chunk["spec"]
    header = []
    if spec.get("ocr"):
        header.append(tasks.ocr.s(slim(chunk)))
    for model in spec.get("captioners") or []:
        header.append(tasks.caption.s(slim(chunk), model))
    if spec.get("vqa") or any(it.get("questions") for it in chunk["items"]):
        header.append(tasks.vqa.s(slim(chunk, questions=True)))
    canvas = chord(header, tasks.compose.s(chunk)) if header else tasks.compose.si([], chunk)
    if spec.get("generator"):
        canvas = canvas | tasks.generate.s()
    return canvas
