"""Writing: generated images and result records to the store (the durable truth)."""
from __future__ import annotations

import time
from concurrent.futures import Future

from workers.pipeline.read import POOL
from workers.records import ChunkSummary, ComposeState, ResultRecord
from workers.storage import open_store


def output_key(batch: str, item_id: str, k: int) -> str:
    """Deterministic: a re-run overwrites the same objects, never adds new ones."""
    return f"runs/{batch}/images/{item_id}-{k}.png"


def start_outputs(batch: str, made: list[tuple[ResultRecord, list]]) -> list[Future]:
    """Start storing each record's images (PNG encoding and uploads in threads, off the
    model's critical path); each record's ``outputs`` gets their URIs as they land. Wait for
    the futures before the records are written."""
    store = open_store()

    def put(r: ResultRecord, k: int, img) -> None:
        r.outputs[k] = store.put_image(output_key(batch, r.id, k), img)

    futures = []
    for r, images in made:
        r.outputs = [None] * len(images)
        futures += [POOL.submit(put, r, k, img) for k, img in enumerate(images)]
    return futures


def record_key(batch: str, item_id: str) -> str:
    return f"runs/{batch}/results/{item_id}.json"


def write_records(state: ComposeState) -> list[Future]:
    """Start writing every record (in the I/O threads); wait for the futures before the
    chunk counts as done."""
    store, now = open_store(), time.time()

    def put(rec: ResultRecord) -> None:
        rec.finished_at = now
        store.put_json(record_key(state.batch, rec.id), rec.dump())

    return [POOL.submit(put, rec) for rec in state.records]


def summary(state: ComposeState) -> dict:
    """The chunk's small summary (it goes through Redis)."""
    failed = sum(1 for r in state.records if r.error)
    return ChunkSummary(batch=state.batch, chunk=state.chunk, done=len(state.records) - failed,
                        failed=failed, ids=[r.id for r in state.records]).dump()


def finish(state: ComposeState) -> dict:
    """Write every record; return the chunk's summary."""
    from workers.pipeline import reuse

    for f in write_records(state):
        f.result()
    reuse.start()  # compose's reuse writes, now that the records are in
    return summary(state)
