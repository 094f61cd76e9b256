"""Embedded mode: the same canvas, run in-process (Celery eager) against a file:// store
under ``--out``. No broker, no server."""
from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from workers.settings import get_settings, use_settings
from workers.spec import PipelineSpec


def run(inputs: Iterable[str] | str, spec: PipelineSpec | None = None, out: str | Path = "out",
        *, batch: str = "run", chunk: int | None = None, coco: str | None = None,
        images: str | None = None, limit: int | None = None, ids: list[int] | None = None,
        on_chunk: Callable[[int], None] | None = None, image_column: str | None = None,
        keep_columns: list[str] | None = None) -> list[dict]:
    """Run the pipeline over ``inputs`` in this process; write ``out/manifest.jsonl`` and the
    images under ``out/``; return the result records in input order. ``on_chunk(n)`` is
    called after each chunk of ``n`` items. ``image_column``/``keep_columns``: for Parquet
    inputs (the image column, and the columns kept as each record's ``meta``)."""
    from orchestrator import ops
    from orchestrator.batch import Batch
    from orchestrator.submit import submit
    from workers.app import app

    if isinstance(inputs, str):
        inputs = [inputs]
    spec = (spec or PipelineSpec()).resolved(get_settings().profile)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    order: list[str] = []
    eager = dict(task_always_eager=True, task_eager_propagates=True, task_store_eager_result=False)
    before = {k: app.conf.get(k) for k in eager}
    app.conf.update(eager)
    try:
        with use_settings(store=out.as_uri()):
            from workers.storage import open_store

            store = open_store(out.as_uri())
            b = Batch(batch, store)
            if b.exists():  # a new run into the same --out replaces the last one's ledger
                for key in list(store.list(f"runs/{batch}/chunks/")):
                    store.delete(key)
                for key in (f"runs/{batch}/batch.json", ops.items_key(batch)):
                    store.delete(key)
                ops.uncancel(batch, store)  # and its cancel marker and summary

            counted = (lambda c: on_chunk(len(c.items))) if on_chunk else None
            t0 = time.time()
            b = submit(inputs, spec, name=batch, chunk=chunk, coco=coco, images=images,
                       limit=limit, ids=ids, store=store, app=app, order=order, on_chunk=counted,
                       image_column=image_column, keep_columns=keep_columns)
            from workers.pipeline import reuse

            reuse.flush()  # the stage-reuse objects compose wrote in the background
            records = list(b.results(order))
            ops.auto_gc(b, {"complete": len(records) == len(order)})  # ITX_AUTO_GC
    finally:
        app.conf.update(before)
    with (out / "manifest.jsonl").open("w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    (out / "summary.json").write_text(json.dumps({
        "items": len(records), "failed": sum(1 for r in records if r.get("error")),
        "seconds": round(time.time() - t0, 2), "spec": spec.model_dump(mode="json")}, indent=1))
    return records
