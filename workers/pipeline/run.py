"""Running one stage's backend over a chunk: the good images, in the backend's mini-batches,
with the inputs its declaration says it consumes; one bad item costs only itself."""
from __future__ import annotations

import logging
import time

from workers.images import ItemError
from workers.pipeline.read import read_images
from workers.records import Chunk, Item, StagePartial
from workers.spec import PipelineSpec
from workers.stages import table

log = logging.getLogger(__name__)


def header_stages(spec: PipelineSpec, items: list[Item]) -> list[tuple[str, str]]:
    """(stage, backend) of a chunk's header tasks: what the canvas enqueues and what compose
    needs one partial of each, so the two can never disagree."""
    out = [("ocr", spec.ocr)] if spec.ocr else []
    out += [("caption", m) for m in spec.captioners or []]
    if spec.vqa_backend and (spec.vqa or any(it.questions for it in items)):
        out.append(("vqa", spec.vqa_backend))
    return out


def item_questions(spec: PipelineSpec, item: Item) -> list[str]:
    """The spec's questions, then the item's own (from its manifest row)."""
    return list(spec.vqa) + [q for q in item.questions if q not in spec.vqa]


def error_text(e: BaseException) -> str:
    return str(e) if isinstance(e, ItemError) else f"{type(e).__name__}: {e}"


def load(spec: PipelineSpec, stage: str, name: str):
    """The loaded backend for ``stage``/``name`` under the spec (its ``--model`` overrides)."""
    from workers.models.cache import load_backend

    return load_backend(stage, name, ref=spec.model_ref(stage, name), profile=spec.profile)


def run_stage(chunk: Chunk, stage: str, name: str) -> StagePartial:
    """Run backend ``stage``/``name`` over the chunk's good images in mini-batches."""
    spec, decl = chunk.spec, table.get(stage, name)
    partial = StagePartial(stage=decl.key, model=spec.model_ref(stage, name))
    images = read_images(chunk.items)
    for i, img in images.items():
        if isinstance(img, ItemError):
            partial.errors[i] = str(img)
    good = [it for it in chunk.items if it.id in images and not isinstance(images[it.id], ItemError)]
    if not good:
        return partial
    try:
        backend = load(spec, stage, name)
    except Exception as e:
        msg = f"model_unavailable: {decl.key}: {error_text(e)}"
        log.error(msg)
        partial.errors.update({it.id: msg for it in good})
        return partial
    cols = [[images[it.id] for it in good]]
    if table.QUESTIONS in decl.consumes:
        cols.append([item_questions(spec, it) for it in good])
    outs, per = run_isolated(backend, decl.key, cols, backend.spec_kwargs(spec))
    for it, out in zip(good, outs):
        if isinstance(out, ItemError):
            partial.errors[it.id] = str(out)
        else:
            partial.results[it.id] = out
            partial.ms[it.id] = round(per, 1)
    return partial


def run_isolated(backend, key: str, cols: list, kwargs: dict) -> tuple[list, float]:
    """Run ``backend`` over parallel columns (``None`` passes through) in its mini-batches.
    If a batch fails, run item by item, so one bad item costs only itself: its output is an
    ``ItemError``. Returns the outputs and the milliseconds per item."""
    n = len(cols[0])
    t0 = time.perf_counter()
    try:
        outs = backend.run(*cols, **kwargs)
    except Exception as e:
        if is_time_limit(e):
            raise
        log.warning("%s failed on a batch (%s); retrying item by item", key, error_text(e))
        outs = []
        for j in range(n):
            try:
                outs.append(backend.run(*[None if c is None else [c[j]] for c in cols],
                                        **kwargs)[0])
            except Exception as e1:
                if is_time_limit(e1):
                    raise
                outs.append(ItemError("stage_failed", f"{key}: {error_text(e1)}"))
    return outs, (time.perf_counter() - t0) * 1000 / max(1, n)


def is_time_limit(e: BaseException) -> bool:
    return type(e).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded")
