"""Scoring inside the tasks that already hold the inputs (see ``workers.stages.score``).

compose (on the generator's pool, or the score backend's without one): the source image
against each caption (``clip:caption:<c>``; with ``caption_for_prompt=best`` this picks the
caption the prompt starts from) and against the final prompt (``clip:prompt``).
generate (heavy pool), with the new images still in memory: the prompt against each output,
the source against each output, and the OCR read-back of each output.

A score that cannot be computed (the scorer's weights missing, one image that breaks it)
becomes the item's error with its own kind; it never costs another item.
"""
from __future__ import annotations

import logging
import time

from workers.images import ItemError
from workers.pipeline.read import Lru, read_images
from workers.pipeline.run import error_text, load, run_isolated
from workers.records import Item, ResultRecord
from workers.spec import PipelineSpec
from workers.stages import score as S

log = logging.getLogger(__name__)

# (scorer ref, source image URI) -> unit embedding: compose and generate of a chunk often run
# in one process (always embedded), so the source is embedded once
EMBEDS = Lru(8192)


def wanted(spec: PipelineSpec) -> bool:
    return bool(spec.scorer) and (spec.score or spec.caption_for_prompt == S.BEST)


def _key(spec: PipelineSpec) -> str:
    return f"score:{spec.scorer}"


def _scorer(spec: PipelineSpec, records: list[ResultRecord]):
    key = _key(spec)
    try:
        backend = load(spec, "score", spec.scorer)
    except Exception as e:
        msg = f"model_unavailable: {key}: {error_text(e)}"
        log.error(msg)
        for r in records:
            r.error = msg
        return None
    for r in records:
        r.models[key] = backend.ref or spec.model_ref("score", spec.scorer)
    return backend


def _embed(backend, key: str, xs: list, kind: str) -> list:
    outs, _ = run_isolated(backend, key, [xs], {"kind": kind})
    return outs


def _fail(rec: ResultRecord, out) -> bool:
    if isinstance(out, ItemError):
        rec.error = f"score_failed: {out}"
        return True
    return False


def _took(records: list[ResultRecord], key: str, t0: float) -> None:
    per = (time.perf_counter() - t0) * 1000 / max(1, len(records))
    for r in records:
        r.timings_ms[key] = round((r.timings_ms.get(key) or 0.0) + per, 1)


def source_embeddings(spec: PipelineSpec, backend, records: list[ResultRecord]) -> dict:
    """``id -> unit embedding`` of each record's source image (cached per process); a
    source that cannot be read or embedded is its record's error."""
    key, out, todo = _key(spec), {}, []
    for r in records:
        e = EMBEDS.get((backend.ref, r.image))
        if e is None:
            todo.append(r)
        else:
            out[r.id] = e
    if todo:
        imgs = read_images([Item(id=r.id, image=r.image) for r in todo])
        good = []
        for r in todo:
            if isinstance(imgs.get(r.id), ItemError):
                r.error = str(imgs[r.id])
            else:
                good.append(r)
        for r, e in zip(good, _embed(backend, key, [imgs[r.id] for r in good], "image")):
            if not _fail(r, e):
                EMBEDS.put((backend.ref, r.image), e)
                out[r.id] = e
    return out


def score_captions(spec: PipelineSpec, records: list[ResultRecord]) -> dict:
    """``clip:caption:<c>`` of every caption, and (``best``) ``prompt_caption``: the captioner
    whose caption the prompt starts from. Returns the source embeddings for the prompt."""
    from workers.stages.score.clip import cosine

    todo = [r for r in records if not r.error]
    if not todo or not wanted(spec):
        return {}
    t0 = time.perf_counter()
    backend = _scorer(spec, todo)
    if backend is None:
        return {}
    src = source_embeddings(spec, backend, todo)
    pairs = [(r, c, text) for r in todo if r.id in src for c, text in r.captions.items()]
    embs = _embed(backend, _key(spec), [t for _, _, t in pairs], "text")
    for (r, c, _), e in zip(pairs, embs):
        if not r.error and not _fail(r, e):
            r.scores[S.caption_key(c)] = S.clip_score(cosine(src[r.id], e))
    if spec.caption_for_prompt == S.BEST:
        for r in todo:
            if not r.error:
                r.prompt_caption = S.best_caption(r.scores, list(r.captions))
    _took(todo, _key(spec), t0)
    return src


def score_prompts(spec: PipelineSpec, records: list[ResultRecord], src: dict) -> None:
    """``clip:prompt``: the final prompt against the source image."""
    from workers.stages.score.clip import cosine

    todo = [r for r in records if not r.error and r.prompt and r.id in src]
    if not todo or not spec.score:
        return
    t0 = time.perf_counter()
    backend = load(spec, "score", spec.scorer)  # loaded by score_captions
    for r, e in zip(todo, _embed(backend, _key(spec), [r.prompt for r in todo], "text")):
        if not _fail(r, e):
            r.scores[S.PROMPT_KEY] = S.clip_score(cosine(src[r.id], e))
    _took(todo, _key(spec), t0)


def score_outputs(spec: PipelineSpec, made: list[tuple[ResultRecord, list]]) -> None:
    """Per generated image ``k``: ``clip:output:<k>`` (prompt adherence), ``clip-i:output:<k>``
    (the source's and the output's image embeddings) and, where the source has OCR text,
    ``ocr-readback:output:<k>`` (the spec's OCR backend reads the output)."""
    from workers.stages.score.clip import cosine

    made = [(r, ims) for r, ims in made if not r.error and ims]
    if not made or not spec.score:
        return
    t0 = time.perf_counter()
    records = [r for r, _ in made]
    backend = _scorer(spec, records)
    if backend is None:
        return
    key = _key(spec)
    src = source_embeddings(spec, backend, records)
    flat = [(r, k, im) for r, ims in made for k, im in enumerate(ims)]
    outs = _embed(backend, key, [im for _, _, im in flat], "image")
    prompts = dict(zip([r.id for r in records],
                       _embed(backend, key, [r.prompt or "" for r in records], "text")))
    for (r, k, _), e in zip(flat, outs):
        if r.error or _fail(r, e) or _fail(r, prompts[r.id]):
            continue
        r.scores[S.output_key("clip", k)] = S.clip_score(cosine(prompts[r.id], e))
        if r.id in src:
            r.scores[S.output_key("clip-i", k)] = round(cosine(src[r.id], e), S.DIGITS)
    _took(records, key, t0)
    _readback(spec, [(r, k, im) for r, k, im in flat if not r.error])


def _readback(spec: PipelineSpec, flat: list) -> None:
    flat = [(r, k, im) for r, k, im in flat if r.ocr is not None and r.ocr.text.strip()]
    if not flat or not spec.ocr:
        return
    key = f"ocr:{spec.ocr}"
    t0 = time.perf_counter()
    records = list({r.id: r for r, _, _ in flat}.values())
    try:
        ocr = load(spec, "ocr", spec.ocr)
    except Exception as e:
        for r in records:
            r.error = f"model_unavailable: {key} (for ocr-readback): {error_text(e)}"
        return
    outs, _ = run_isolated(ocr, key, [[im for _, _, im in flat]], {})
    for (r, k, _), out in zip(flat, outs):
        if not _fail(r, out):
            r.scores[S.output_key("ocr-readback", k)] = S.readback(r.ocr.text, out.get("text", ""))
    _took(records, "score:ocr-readback", t0)
