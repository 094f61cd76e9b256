"""How busy a light worker keeps its models when every store request takes 20 ms more.

One `celery -A workers worker -Q light` (concurrency 1, one torch thread), a dedicated
redis-server, an S3 store (moto's server) that the worker reaches through
``tests/faultproxy.py`` with 20 ms added to every request (`itx submit` talks to moto
directly, so staging the inputs is not slowed down), every light stage (rapidocr, three
captioners, VQA), no generator, chunk 32, tiny-random models.

The figure, ``model_busy_pct``: the seconds the worker's pool process spent inside model
calls (``Backend.run``'s mini-batch ``__call__``, counted by the hook in
``workers/stages/base.py`` and kept in ``$ITX_MODEL_TIME_DIR/<pid>``) over the worker's
wall time for the batch (its first task of the batch received, from the worker's log ->
the last record's ``finished_at``), as a percentage. The rest is the worker waiting on the
store (reading chunks and images, handing stage results on, writing records), decoding,
and Celery. Target: >= 90 %. ``batch_busy_pct`` is the same over the batch's whole wall
time (``batch.json`` created -> last record), which also counts the submitter staging the
first chunk before the worker has anything to do.

    python benchmarks/pipeline.py [--quick]
"""
from __future__ import annotations

import json
import re
import time
from datetime import datetime
from pathlib import Path

try:
    from benchmarks import common as C
    from benchmarks.overhead import batch_span, itx
except ImportError:  # run as a script
    import common as C
    from overhead import batch_span, itx

CHUNK = 32
DELAY_S = 0.020
TARGET_PCT = 90.0
BUCKET = "itx-bench-pipeline"
OPTS = ["--profile", "tiny-random", "--ocr", "rapidocr", "--captioners", "blip,git,vit-gpt2",
        "--vqa", "what is this?", "--generator", "none", "--chunk", str(CHUNK)]


def model_seconds(d: Path) -> dict[int, float]:
    out = {}
    for f in d.iterdir():
        try:
            out[int(f.name)] = float(f.read_text() or 0)
        except (ValueError, OSError):
            pass
    return out


_RECEIVED = re.compile(r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}): INFO/MainProcess\] "
                       r"Task itx\.\w+\[[^\]]+\] received", re.M)


def first_task_received(log: str, after: float) -> float | None:
    """Epoch seconds of the first task the worker's log says it received after ``after``."""
    for m in _RECEIVED.finditer(log):
        t = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
        if t >= after:
            return t
    return None


def main(quick: bool = False) -> dict:
    import boto3

    from tests.cluster import Worker, redis_server
    from tests.faultproxy import FaultProxy
    from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

    n = 384 if quick else 1024
    tmp = C.tmpdir("itx-bench-pipeline-")
    times = tmp / "model-time"
    times.mkdir()
    C.write_images(tmp / "warm", CHUNK, start=70_000, size=(128, 96))
    C.write_images(tmp / "in", n, size=(128, 96))
    res: dict = {"n": n, "chunk": CHUNK, "store_delay_ms": DELAY_S * 1000, "spec": OPTS}
    with redis_server() as redis, moto_server() as endpoint, FaultProxy(endpoint) as proxy:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        base = dict(ITX_BROKER_URL=redis.url + "/0", ITX_RESULT_BACKEND=redis.url + "/1",
                    ITX_STORE=f"s3://{BUCKET}/store", **DUMMY_CREDENTIALS)
        submitter = C.worker_base_env(**base, AWS_ENDPOINT_URL=endpoint)
        w = Worker("light", C.worker_base_env(**base, AWS_ENDPOINT_URL=proxy.url,
                                              ITX_MODEL_TIME_DIR=str(times)), "pipeline-bench")
        try:
            w.wait_ready()
            itx(submitter, "submit", str(tmp / "warm"), "--batch", "warm", "--wait", *OPTS)
            proxy.set(delay=DELAY_S)
            proxy.reset_counts()
            before = model_seconds(times)
            t, t_epoch = time.perf_counter(), time.time()
            itx(submitter, "submit", str(tmp / "in"), "--batch", "meas", "--wait", *OPTS)
            cli_s = time.perf_counter() - t
            after = model_seconds(times)
            requests = dict(proxy.counts)
        finally:
            w.stop()
        started = first_task_received(w.output(), t_epoch)
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        store = tmp / "store-copy"  # batch_span reads a file tree: copy the batch's metadata
        for prefix in ("store/runs/meas/batch.json", "store/runs/meas/results/"):
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                     Prefix=prefix):
                for o in page.get("Contents", []):
                    p = store / o["Key"].split("/", 1)[1]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read())
    span, done, failed = batch_span(store, "meas")
    if done != n or failed:
        raise RuntimeError(f"the batch wrote {done} records ({failed} failed) of {n}")
    if started is None:
        raise RuntimeError("the worker's log shows no task received for the batch")
    created = json.loads((store / "runs" / "meas" / "batch.json").read_text())["created"]
    worker_span = created + span - started
    pids = [p for p in after if after[p] > before.get(p, 0.0)]
    if len(pids) != 1:
        raise RuntimeError(f"expected model time from one pool process, got {after}")
    busy = after[pids[0]] - before.get(pids[0], 0.0)
    res.update({
        "model_busy_pct": round(100 * busy / worker_span, 1),
        "batch_busy_pct": round(100 * busy / span, 1),
        "model_s": round(busy, 2), "worker_wall_s": round(worker_span, 2),
        "first_task_after_s": round(started - created, 2),
        "wall_s": round(span, 2), "cli_wall_s": round(cli_s, 2),
        "items_per_s": round(n / span, 1),
        "worker_store_requests_per_item": round(requests["forwarded"] / n, 2),
        "store_wait_floor_s": round(requests["forwarded"] * DELAY_S, 2),
    })
    res["target"] = C.target(res["model_busy_pct"], ">=", TARGET_PCT)
    C.table(f"pipeline: one light worker, {n} items, chunk {CHUNK}, every light stage, "
            f"+{DELAY_S * 1000:.0f} ms per store request",
            ["figure", "value", "target"],
            [["model busy (% of the worker's wall time)", res["model_busy_pct"],
              f">= {TARGET_PCT:g} {C.verdict(res['target'])}"],
             ["model busy (% of the batch's wall time)", res["batch_busy_pct"], ""],
             ["seconds inside model calls", res["model_s"], ""],
             ["worker wall seconds (first task -> last record)", res["worker_wall_s"], ""],
             ["batch wall seconds (created -> last record)", res["wall_s"], ""],
             ["  of which staging the first chunk", res["first_task_after_s"], ""],
             ["items/s", res["items_per_s"], ""],
             ["worker store requests per item", res["worker_store_requests_per_item"], ""],
             ["  x 20 ms, if none overlapped (s)", res["store_wait_floor_s"], ""]])
    C.write("pipeline", res)
    return res


if __name__ == "__main__":
    C.cli(main)
