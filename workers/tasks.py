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
from workers.storage import TransientStoreError

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


LIGHT = dict(base=StageTask, bind=True, soft_time_limit=int(_S.light_time_limit * 0.9),
             time_limit=_S.light_time_limit)
HEAVY = dict(base=StageTask, bind=True, soft_time_limit=int(_S.heavy_time_limit * 0.9),
             time_limit=_S.heavy_time_limit)


def _timed_out(stage: str, chunk: dict) -> dict:
    """A light stage that overran its soft limit: its items become error records."""
    msg = f"timeout: {stage} overran its time limit"
    return {"stage": stage, "model": "", "results": {},
            "errors": {it["id"]: msg for it in chunk["items"]}, "ms": {}}


@app.task(name="itx.ocr", **LIGHT)
def ocr(self, chunk: dict) -> dict:
    try:
        return chunks.ocr_chunk(chunk)
    except SoftTimeLimitExceeded:
        return _timed_out(f"ocr:{chunk['spec'].get('ocr')}", chunk)


@app.task(name="itx.caption", **LIGHT)
def caption(self, chunk: dict, model: str) -> dict:
    try:
        return chunks.caption_chunk(chunk, model)
    except SoftTimeLimitExceeded:
        return _timed_out(f"caption:{model}", chunk)


@app.task(name="itx.vqa", **LIGHT)
def vqa(self, chunk: dict) -> dict:
    try:
        return chunks.vqa_chunk(chunk)
    except SoftTimeLimitExceeded:
        return _timed_out("vqa:blip-vqa", chunk)


@app.task(name="itx.compose", **LIGHT)
def compose(self, partials: list[dict], chunk: dict) -> dict:
    return chunks.compose_chunk(partials, chunk)


@app.task(name="itx.generate", **HEAVY)
def generate(self, state: dict) -> dict:
    attempts = self.request.retries + 1
    for r in state.get("records", []):
        r["attempts"] = attempts
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
