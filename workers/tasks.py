"""Thin Celery tasks: take a chunk (JSON), call the stage, return JSON.

Retry policy lives in the decorator; models hang on a per-process cache
(``workers.models.cache``), loaded on first use inside the worker process.
"""
from __future__ import annotations

import logging

from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_process_init

from workers import chunks
from workers.app import app
from workers.settings import get_settings
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


def _timed_out(stage: str, chunk: dict, msg: str | None = None) -> dict:
    """A light stage that overran its soft limit: its items become error records."""
    msg = msg or f"timeout: {stage} overran its time limit"
    return {"stage": stage, "model": "", "results": {},
            "errors": {it["id"]: msg for it in chunk["items"]}, "ms": {}}


def _header(task: StageTask, stage: str, fn, chunk: dict, *args) -> dict:
    """Run one header stage. Its partial says how often it ran (``attempts``) and how often
    botocore retried its store requests (``store_retries``); compose puts both in the records.
    A store still failing after the last Celery retry gives error partials, so the chord
    goes on and every item still gets its record."""
    r0 = store_retries()
    try:
        out = fn(chunk, *args)
    except SoftTimeLimitExceeded:
        out = _timed_out(stage, chunk)
    except TransientStoreError as e:
        if task.request.retries < task.max_retries:
            raise  # autoretry_for: again, with backoff
        out = _timed_out(stage, chunk, f"store_unavailable: {stage}: {e}")
    out["attempts"] = task.attempt
    out["store_retries"] = store_retries() - r0
    return out


@app.task(name="itx.ocr", **LIGHT)
def ocr(self, chunk: dict) -> dict:
    chunk = chunks.load_chunk(chunk)  # a chunk sent by reference is read from the store
    return _header(self, f"ocr:{chunk['spec'].get('ocr')}", chunks.ocr_chunk, chunk)


@app.task(name="itx.caption", **LIGHT)
def caption(self, chunk: dict, model: str) -> dict:
    chunk = chunks.load_chunk(chunk)
    return _header(self, f"caption:{model}", chunks.caption_chunk, chunk, model)


@app.task(name="itx.vqa", **LIGHT)
def vqa(self, chunk: dict) -> dict:
    chunk = chunks.load_chunk(chunk)
    return _header(self, "vqa:blip-vqa", chunks.vqa_chunk, chunk)


@app.task(name="itx.compose", **LIGHT)
def compose(self, partials: list[dict], chunk: dict) -> dict:
    return chunks.compose_chunk(partials, chunk, attempts=self.attempt)


@app.task(name="itx.generate", **HEAVY)
def generate(self, state: dict) -> dict:
    state = chunks.load_state(state)  # compose's records, when it handed them on by reference
    for r in state.get("records", []):  # the most runs of any task of the item's chunk
        r["attempts"] = max(r.get("attempts") or 1, self.attempt)
    try:
        return chunks.generate_chunk(state)
    except SoftTimeLimitExceeded:
        for r in state["records"]:
            if not r["error"] and not r["outputs"]:
                r["error"] = "timeout: generate overran its time limit"
        return chunks.finish(state)


@worker_process_init.connect
def _preload(**_):
    """With ITX_PRELOAD=true, load this pool's default models when a worker process starts
    (in the child, after the fork: CUDA is never touched in the parent)."""
    if not get_settings().preload:
        return
    from workers.models.cache import load_backend
    from workers.models.profiles import defaults

    queues = set(app.amqp.queues.consume_from or app.amqp.queues)
    d = defaults(get_settings().profile)
    todo = []
    if "light" in queues:
        todo += [("ocr", d["ocr"])] + [("caption", c) for c in d["captioners"]]
    if "heavy" in queues:
        todo += [("generate", d["generator"])]
    for stage, name in todo:
        try:
            load_backend(stage, name)
            log.info("preloaded %s:%s", stage, name)
        except Exception as e:  # the first task will report it in its records
            log.error("could not preload %s:%s: %s", stage, name, e)
