"""Thin Celery tasks: take a chunk (JSON), call the stage, return JSON.

Retry policy lives in the decorator; models hang on a per-process cache
(``workers.models.cache``), loaded on first use inside the worker process.
"""
from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init, worker_process_shutdown

from workers import control
from workers.app import app
from workers.pipeline import ahead, reuse
from workers.pipeline.compose import compose as pipeline_compose, timed_out
from workers.pipeline.generate import generate as pipeline_generate
from workers.pipeline.read import POOL, hand_on, load_chunk, load_partial, load_state
from workers.pipeline.run import run_stage
from workers.pipeline.write import finish
from workers.records import Chunk, ChunkSummary, ResultRecord, StagePartial
from workers.settings import get_settings
from workers.stages import table
from workers.storage import TransientStoreError, store_retries

log = logging.getLogger(__name__)
_S = get_settings()


class StageTask(Task):
    """Base for every itx task: transient store/broker errors retry with backoff, bounded."""

    autoretry_for = (TransientStoreError, ConnectionError, TimeoutError)
    retry_backoff = 2
    retry_backoff_max = 60
    retry_jitter = True
    max_retries = 6
    acks_late = True
    reject_on_worker_lost = True

    @property
    def attempt(self) -> int:
        """How many times this task has run for its message: Celery retries, plus one when
        the broker redelivered it after its worker died (a lower bound: the broker marks a
        redelivery, it does not count them)."""
        r = self.request
        return (r.retries or 0) + 1 + int(bool((r.delivery_info or {}).get("redelivered")))


def _soft(limit: int) -> int:
    """The soft limit: 10 % of the hard limit (at least 5 s) before it, time enough for the
    task to write its items' `timeout` error records."""
    return max(1, limit - max(5, limit // 10))


LIGHT = dict(base=StageTask, bind=True, soft_time_limit=_soft(_S.light_time_limit),
             time_limit=_S.light_time_limit)
HEAVY = dict(base=StageTask, bind=True, soft_time_limit=_soft(_S.heavy_time_limit),
             time_limit=_S.heavy_time_limit)


def _header(task: StageTask, chunk: Chunk, stage: str, name: str) -> dict:
    """Run one header stage. Its partial says how often it ran (``attempts``) and how often
    botocore retried its store requests (``store_retries``); compose puts both in the records.
    A stage that overran its soft limit, or whose store still fails after the last Celery
    retry, gives error partials, so the chord goes on and every item still gets its record."""
    key = f"{stage}:{name}"
    r0 = store_retries()
    lost = control.poisoned(task)  # counts a redelivery: call first
    try:
        if control.is_cancelled(chunk.batch, wait=False):  # run_stage checks again
            out = StagePartial(stage=key, cancelled=True)
        elif lost:
            out = StagePartial.failed(key, chunk.items, lost)
        else:
            out = run_stage(chunk, stage, name)
    except control.Cancelled:
        out = StagePartial(stage=key, cancelled=True)
    except SoftTimeLimitExceeded:
        out = StagePartial.failed(key, chunk.items, f"timeout: {key} overran its time limit")
    except TransientStoreError as e:
        if task.request.retries < task.max_retries:
            raise  # autoretry_for: again, with backoff
        out = StagePartial.failed(key, chunk.items, f"store_unavailable: {key}: {e}")
    out.attempts = task.attempt
    out.store_retries = store_retries() - r0
    msg = hand_on(chunk, key, out, background=True)
    if (task.request.delivery_info or {}).get("routing_key") in (None, table.LIGHT):
        ahead.start(chunk)  # compose's queue is light without generator or scores
    return msg


def _cancelled(batch: str, chunk: int, n: int) -> dict:
    """A cancelled chunk's summary: no records written (``--resume`` runs its items later)."""
    return ChunkSummary(batch=batch, chunk=chunk, done=0, failed=0, ids=[], cancelled=n).dump()


@app.task(name="itx.stage", ignore_result=True, **LIGHT)
def stage(self, msg: dict, stage: str, name: str) -> dict:
    """One header stage (ocr, caption, vqa, …) of one chunk; its queue comes from the table."""
    return _header(self, load_chunk(msg), stage, name)


@app.task(name="itx.compose", **LIGHT)
def compose(self, partials: list[dict], msg: dict) -> dict:
    r0 = store_retries()
    lost = control.poisoned(self)
    chunk = load_chunk(msg)
    if self.attempt == 1 and not lost and (early := ahead.take(chunk, partials)) is not None:
        return early  # composed ahead here, and its records are in the store
    asked = POOL.submit(control.is_cancelled, chunk.batch, True)  # while the partials load
    parts = [p for p in map(load_partial, partials or []) if p is not None]  # None: lost
    if any(p.cancelled for p in parts) or asked.result():
        reuse.keep(chunk, parts)  # what the chunk's stages finished, for --resume
        reuse.start()
        return _cancelled(chunk.batch, chunk.chunk, len(chunk.items))
    if lost:  # compose itself (a header stage it runs inline) kills its worker
        from workers.records import ComposeState

        recs = [ResultRecord.of(it) for it in chunk.items]
        for r in recs:
            r.error = r.error or lost
        return finish(ComposeState(batch=chunk.batch, chunk=chunk.chunk, spec=chunk.spec,
                                   records=recs))
    try:
        state = pipeline_compose(parts, chunk, attempts=self.attempt)
    except control.Cancelled:
        return _cancelled(chunk.batch, chunk.chunk, len(chunk.items))
    except SoftTimeLimitExceeded:  # e.g. edit rules: every item still gets its record
        return finish(timed_out(chunk, "compose", self.attempt))
    retried = store_retries() - r0
    for r in state.records:
        r.store_retries += retried
    if not chunk.spec.generator:
        return finish(state)
    out = hand_on(chunk, "compose", state)
    reuse.start()
    return out


@app.task(name="itx.generate", **HEAVY)
def generate(self, msg: dict) -> dict:
    if "ids" in msg and "done" in msg:  # compose's summary: the chunk was cancelled
        return msg
    r0 = store_retries()
    lost = control.poisoned(self)
    state = load_state(msg)  # compose's records, when it handed them on by reference
    if control.is_cancelled(state.batch, fresh=True):
        return _cancelled(state.batch, state.chunk, len(state.records))
    for r in state.records:  # the most runs of any task of the item's chunk
        r.attempts = max(r.attempts, self.attempt)
    try:
        if lost:
            for r in state.records:
                r.error = r.error or lost
        else:
            pipeline_generate(state)
    except control.Cancelled:
        return _cancelled(state.batch, state.chunk, len(state.records))
    except SoftTimeLimitExceeded:
        for r in state.records:
            if not r.error and not r.outputs:
                r.error = "timeout: generate overran its time limit"
    retried = store_retries() - r0
    for r in state.records:
        r.store_retries += retried
    return finish(state)


@worker_process_shutdown.connect
def _flush(**_):
    """A pool process that stops first writes the partials and stage-reuse objects it still
    has queued."""
    from workers.pipeline.read import PARTIALS

    PARTIALS.wait(timeout=30)
    reuse.flush(timeout=30)


@worker_process_init.connect
def _preload(**_):
    """With ITX_PRELOAD=true, load the profile's default models of the stages this worker's
    queues run, when a worker process starts (in the child, after the fork: CUDA is never
    touched in the parent)."""
    if not get_settings().preload:
        return
    from workers.models.cache import load_backend
    from workers.models.profiles import default_backends

    queues = set(app.amqp.queues.consume_from or app.amqp.queues)
    for stage_name, name in default_backends(get_settings().profile):
        if table.queue_of(stage_name, name) not in queues:
            continue
        try:
            load_backend(stage_name, name)
            log.info("preloaded %s:%s", stage_name, name)
        except Exception as e:  # the first task will report it in its records
            log.error("could not preload %s:%s: %s", stage_name, name, e)
