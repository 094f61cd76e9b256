"""The Celery canvas for one chunk (see DESIGN.md):

    chord(group(ocr(chunk), caption(chunk, m) for m in captioners, vqa(chunk)), compose(chunk))
        | generate

The header tasks run on the light pool, generate on the heavy pool; compose runs on the
light pool when it is the last step and on the heavy pool when generate follows it.

A chunk that ``itx submit`` wrote to the store (it has a ``ref``) travels by reference: every
task gets ``{"ref", "nonce"}`` and reads the chunk from the store, and the
stages hand their outputs on the same way (``workers.chunks.hand_on``), so a few hundred
bytes cross the broker per chunk. Otherwise header tasks get a slim copy of the chunk (ids,
image URIs, questions) and ``compose`` gets the full chunk.
"""
from __future__ import annotations

from celery import chord

from workers import tasks
from workers.app import HEAVY
from workers.chunks import expected_stages
from workers.spec import PipelineSpec


def slim(chunk: dict, *, questions: bool = False) -> dict:
    keep = ("id", "image", "error") + (("questions",) if questions else ())
    return {"batch": chunk["batch"], "chunk": chunk["chunk"], "spec": chunk["spec"],
            "items": [{k: it[k] for k in keep if it.get(k)} for it in chunk["items"]]}


def pointer(chunk: dict) -> dict:
    """What a task gets for a chunk stored in the store: where it is, and this submission's
    nonce (the ledger key holds batch and chunk number)."""
    return {"ref": chunk["ref"], "nonce": chunk.get("nonce")}


def chunk_canvas(chunk: dict):
    spec = chunk["spec"]
    ref = pointer(chunk) if chunk.get("ref") else None
    # the argument shown in Flower, logs and task events: short, and the same for every task
    label = f"{chunk['batch']}/{int(chunk['chunk']):06d}"

    def sig(task, *args):
        s = task.s(*args)
        return s.set(argsrepr=repr((label, *args[1:]))) if ref else s

    header = []  # the stages compose expects, so the two can never disagree
    for stage in expected_stages(PipelineSpec.model_validate(spec), chunk):
        kind, name = stage.split(":", 1)
        if kind == "ocr":
            header.append(sig(tasks.ocr, ref or slim(chunk)))
        elif kind == "caption":
            header.append(sig(tasks.caption, ref or slim(chunk), name))
        else:
            header.append(sig(tasks.vqa, ref or slim(chunk, questions=True)))
    body = ref or chunk
    compose = sig(tasks.compose, body) if header else tasks.compose.si([], body)
    if spec.get("generator"):
        # compose (a few ms of text work) runs where generate runs: on the light queue it
        # would wait behind the header tasks of every chunk submitted after this one, and
        # the heavy pool would idle until the light pool had drained the whole batch
        compose = compose.set(queue=HEAVY)
    canvas = chord(header, compose) if header else compose
    if spec.get("generator"):
        canvas = canvas | sig(tasks.generate)
    return canvas
