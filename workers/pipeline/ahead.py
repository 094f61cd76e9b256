"""Composing ahead: the writing twin of ``prefetch.py``.

A chunk's compose task is queued when its last header task ends, behind the header tasks of
the chunks submitted after it; on a worker that runs them all, compose's records (one PUT
per item, in the store before compose returns, since its message is acked then) would hold
the model idle once per chunk at the end of the queue. So the process that has just run a
chunk's last header stage, and holds every partial of the chunk in memory, composes it at
once and starts writing its records in the background while its next task runs. When the
compose task comes, in the same process, it waits for those writes and returns their
summary: the records are still in the store before its message is acked.

Anywhere else — compose in another process, a redelivered compose, a write that failed, a
different set of partials in compose's message — compose runs as always and writes the same
records to the same keys again. Chunks whose compose runs a model (``--score``, the ``best``
caption) or hands on to a generator are not composed ahead. ``ITX_COMPOSE_AHEAD=false``
turns it off.
"""
from __future__ import annotations

import logging
from concurrent.futures import Future
from dataclasses import dataclass

from workers import control
from workers.pipeline import reuse
from workers.pipeline.compose import compose
from workers.pipeline.read import OBJECTS, Lru, part_key
from workers.pipeline.run import header_stages
from workers.pipeline.write import summary, write_records
from workers.records import Chunk, StagePartial
from workers.settings import get_settings
from workers.storage import open_store

log = logging.getLogger(__name__)


@dataclass
class Early:
    refs: frozenset[str]  # the partials it was composed from
    writes: list[Future]  # the records' PUTs
    summary: dict


_EARLY = Lru(64)  # (store, ledger key, nonce) -> Early


def _key(chunk: Chunk) -> tuple:
    return (open_store().uri, chunk.ref, chunk.nonce)


def start(chunk: Chunk) -> None:
    """After a header task handed its partial on: compose ``chunk`` now if this process holds
    every header partial of it, and start writing the records. Never raises (best effort)."""
    spec = chunk.spec
    if not (get_settings().compose_ahead and chunk.ref) or spec.generator or spec.scorer:
        return
    try:
        if _EARLY.get(_key(chunk)) is not None:
            return
        uri = open_store().uri
        refs = [part_key(chunk, f"{stage}:{name}")
                for stage, name in header_stages(spec, chunk.items)]
        raw = [OBJECTS.get((uri, ref, chunk.nonce)) for ref in refs]
        if not refs or any(r is None for r in raw):
            return  # a stage ran elsewhere, or has not run yet
        parts = [StagePartial.model_validate(r) for r in raw]
        if any(p.cancelled for p in parts) or control.is_cancelled(chunk.batch):
            return
        state = compose(parts, chunk)
        writes = write_records(state)
        reuse.start()  # queued behind the records
        _EARLY.put(_key(chunk), Early(frozenset(refs), writes, summary(state)))
    except Exception as e:  # compose's own task composes it
        log.warning("chunk %s/%s not composed ahead: %s", chunk.batch, chunk.chunk, e)


def take(chunk: Chunk, partials: list[dict] | None) -> dict | None:
    """The summary of ``chunk``'s records composed ahead here from exactly the partials
    compose's message names, once they are all in the store; else None (compose as always)."""
    if not chunk.ref:
        return None
    early = _EARLY.get(_key(chunk))
    refs = [p.get("ref") for p in partials or []]
    if early is None or len(refs) != len(set(refs)) or set(refs) != early.refs:
        return None
    try:
        for f in early.writes:
            f.result()
    except Exception as e:
        log.warning("chunk %s/%s: records composed ahead not written (%s); composing again",
                    chunk.batch, chunk.chunk, e)
        return None
    return early.summary
