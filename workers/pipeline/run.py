"""Running one stage's backend over a chunk: the good images, in the backend's mini-batches,
with the inputs its declaration says it consumes; one bad item costs only itself."""
from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from itertools import chain

from workers.images import ItemError
from workers.pipeline.read import stream_images
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


def reuse_keys(chunk: Chunk, stage: str, name: str, ref: str | None = None
               ) -> dict[str, tuple[str, str]]:
    """``item id -> (content, entry)``: where each content-addressed item's output of this
    stage is kept for reuse (``reuse.py``); ``ref``: the model ref (the spec's by default)."""
    from workers.pipeline import reuse

    spec, decl = chunk.spec, table.get(stage, name)
    asks, ref = table.QUESTIONS in decl.consumes, ref or spec.model_ref(stage, name)
    keys = {}
    for it in chunk.items:
        content = None if it.error else reuse.content_of(it)
        if content:
            opts = {"questions": item_questions(spec, it)} if asks else {}
            keys[it.id] = (content, reuse.entry_key(decl.key, ref, opts))
    return keys


def run_stage(chunk: Chunk, stage: str, name: str) -> StagePartial:
    """Run backend ``stage``/``name`` over the chunk's good images in mini-batches. Outputs
    an earlier run kept for the same image, model and options are reused (``reuse.py``);
    before each mini-batch a cancelled batch raises :class:`workers.control.Cancelled`. The
    first mini-batch runs as soon as its images are read; once all are, the next chunk is
    read ahead while the model runs (``prefetch.py``)."""
    from workers.pipeline import prefetch, reuse

    spec, decl = chunk.spec, table.get(stage, name)
    partial = StagePartial(stage=decl.key, model=spec.model_ref(stage, name))
    prefetch.wait(chunk)  # what a read-ahead of this chunk has read is in memory
    keys = reuse_keys(chunk, stage, name)
    hits = reuse.lookup(keys, chunk.nonce, reuse.new_contents(chunk.items)) \
        if spec.reuse and keys else {}
    for i, hit in hits.items():
        partial.results[i] = hit["result"]
        partial.ms[i] = 0.0
        partial.reused.append(i)
    todo = [it for it in chunk.items if it.id not in hits]
    # the first mini-batch runs while the rest of the chunk is still being read
    decoded = _decoded(todo, partial, when_read=lambda: prefetch.ahead(chunk))
    first = next(decoded, None)
    if first is None:
        return partial
    try:
        backend = load(spec, stage, name)
    except Exception as e:
        msg = f"model_unavailable: {decl.key}: {error_text(e)}"
        log.error(msg)
        partial.errors.update({it.id: msg for it, _ in chain([first], decoded)})
        return partial
    asks, step = table.QUESTIONS in decl.consumes, max(1, backend.max_batch)
    good: list[Item] = []

    def columns(part: list) -> list:
        cols = [[img for _, img in part]]
        if asks:
            cols.append([item_questions(spec, it) for it, _ in part])
        return cols

    def parts():
        part = []
        for it, img in chain([first], decoded):
            good.append(it)
            part.append((it, img))
            if len(part) == step:
                yield columns(part)
                part = []
        if part:
            yield columns(part)

    outs, per = run_parts(backend, decl.key, parts(), backend.spec_kwargs(spec), chunk.batch)
    for it, out in zip(good, outs):
        if isinstance(out, ItemError):
            partial.errors[it.id] = str(out)
        else:
            partial.results[it.id] = out
            partial.ms[it.id] = round(per, 1)
    return partial  # compose keeps the fresh outputs for reuse


def _decoded(items: list[Item], partial: StagePartial, when_read: Callable[[], None]
             ) -> Iterator[tuple[Item, object]]:
    """The items whose image was read and decoded, with it, in order, each as soon as it is
    in memory (``stream_images``); the others' errors go in the partial."""
    for it, img in stream_images(items, when_read):
        if isinstance(img, ItemError):
            partial.errors[it.id] = str(img)
        else:
            yield it, img


def run_sliced(backend, key: str, cols: list, kwargs: dict, batch: str,
               on_part: Callable[[int, list], None] | None = None) -> tuple[list, float]:
    """:func:`run_parts` over parallel columns cut into the backend's mini-batches
    (``backend.max_batch`` items)."""
    n = len(cols[0])
    step = max(1, getattr(backend, "max_batch", n) or n)
    parts = ([None if c is None else c[i:i + step] for c in cols] for i in range(0, n, step))
    return run_parts(backend, key, parts, kwargs, batch, on_part)


def run_parts(backend, key: str, parts: Iterable[list], kwargs: dict, batch: str,
              on_part: Callable[[int, list], None] | None = None) -> tuple[list, float]:
    """:func:`run_isolated` on each mini-batch (a list of columns; ``parts`` may be a
    generator that fills them as their inputs arrive), checking before each whether
    ``batch`` was cancelled (raises ``Cancelled``). ``on_part(start, outputs)`` is called with
    each mini-batch's outputs as it is done (the generator starts storing them while the next
    one runs). Returns every output and the model's milliseconds per item."""
    from workers import control

    outs: list = []
    ms = 0.0
    for part in parts:
        control.check(batch)
        got, per = run_isolated(backend, key, part, kwargs)
        if on_part:
            on_part(len(outs), got)
        outs.extend(got)
        ms += per * len(got)
    return outs, ms / max(1, len(outs))


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
