"""Writing: generated images and result records to the store (the durable truth)."""
from __future__ import annotations

import time

from workers.pipeline.read import POOL
from workers.records import ChunkSummary, ComposeState, ResultRecord
from workers.storage import open_store


def output_key(batch: str, item_id: str, k: int) -> str:
    """Deterministic: a re-run overwrites the same objects, never adds new ones."""
    return f"runs/{batch}/images/{item_id}-{k}.png"


def put_outputs(batch: str, made: list[tuple[ResultRecord, list]]) -> None:
    """Store each record's images (PNG encoding and uploads in threads, off the model's
    critical path) and set its ``outputs`` to their URIs."""
    store = open_store()
    jobs = [(r, k, img) for r, images in made for k, img in enumerate(images)]
    for r, images in made:
        r.outputs = [None] * len(images)
    for r, k, uri in POOL.map(lambda j: (j[0], j[1], store.put_image(output_key(batch, j[0].id, j[1]),
                                                                     j[2])), jobs):
        r.outputs[k] = uri


def record_key(batch: str, item_id: str) -> str:
    return f"runs/{batch}/results/{item_id}.json"


def finish(state: ComposeState) -> dict:
    """Write every record; return the chunk's small summary (it goes through Redis)."""
    store, now = open_store(), time.time()

    def put(rec: ResultRecord) -> None:
        rec.finished_at = now
        store.put_json(record_key(state.batch, rec.id), rec.dump())

    list(POOL.map(put, state.records))
    failed = sum(1 for r in state.records if r.error)
    return ChunkSummary(batch=state.batch, chunk=state.chunk, done=len(state.records) - failed,
                        failed=failed, ids=[r.id for r in state.records]).dump()
