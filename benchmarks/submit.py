"""Submission speed and memory: a 100,000-line JSONL manifest of images already in the store.

Every line names an ``s3://`` object inside the configured store (``inputs/<sha>.png``), so
submission reads no image: it makes item ids, writes the chunk ledgers and enqueues one
canvas per chunk, every stage on, chunk 32. The broker is a dedicated redis-server with no
workers (nothing is consumed; the queues are dropped afterwards); the store is moto's S3
server. `itx submit` runs as its own process, as users run it:

- items/s: items over the seconds `itx submit` reports for the submission (from before the
  manifest is opened to the last chunk enqueued; interpreter start-up not included, and
  reported separately as the command's wall time);
- peak RSS: the `itx submit` process's maximum resident set (``ru_maxrss`` from wait4).

    python benchmarks/submit.py [--quick]
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    import common as C

CHUNK = 32
N = 100_000
TARGET_RATE = 5000
TARGET_RSS = 300
BUCKET = "itx-bench-submit"


def write_manifest(path: Path, n: int) -> None:
    with path.open("w") as f:
        for i in range(n):
            h = hashlib.sha256(str(i).encode()).hexdigest()[:32]
            f.write(json.dumps({"image": f"s3://{BUCKET}/store/inputs/{h}.png"}) + "\n")


def submit_once(env: dict, manifest: Path, batch: str, chunk: int) -> dict:
    """`itx submit` in its own process: its figures, and its peak RSS from wait4."""
    from tests.cluster import BIN, REPO

    opts = [*C.SPEC_OPTS, "--chunk", str(chunk)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        t = time.perf_counter()
        proc = subprocess.Popen([str(BIN / "itx"), "submit", str(manifest), "--batch", batch,
                                 *opts], env=env, cwd=REPO, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    m = re.search(r"(\d+) items submitted.*\(([\d.]+) s\)", stdout)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"itx submit failed ({proc.returncode}):\n{stdout[-2000:]}\n"
                           f"{stderr[-3000:]}")
    submitted, secs = int(m.group(1)), float(m.group(2))
    return {"chunk": chunk, "submitted": submitted, "seconds": secs, "wall_s": round(wall, 2),
            "items_per_s": round(submitted / secs), "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(quick: bool = False) -> dict:
    import boto3
    import redis as redislib

    from tests.cluster import redis_server, worker_env
    from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

    tmp = C.tmpdir("itx-bench-submit-")
    manifest = tmp / "manifest.jsonl"
    n = N // 5 if quick else N  # 20,000 lines: steady rate, a fifth of the time
    write_manifest(manifest, n)
    res: dict = {"n": n, "chunk": CHUNK, "spec": C.SPEC_OPTS}
    chunks = [CHUNK] if quick else [CHUNK, 2 * CHUNK]
    runs = []
    with redis_server() as redis, moto_server() as endpoint:
        boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                     aws_access_key_id="testing",
                     aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
        env = worker_env(C.worker_base_env(
            ITX_BROKER_URL=redis.url + "/0", ITX_RESULT_BACKEND=redis.url + "/1",
            ITX_STORE=f"s3://{BUCKET}/store", AWS_ENDPOINT_URL=endpoint, **DUMMY_CREDENTIALS))
        r = redislib.Redis.from_url(redis.url)
        for k in chunks:
            runs.append(submit_once(env, manifest, f"sub{k}", k))
            runs[-1]["light_messages_queued"] = r.llen("light")
            r.flushall()  # the queues and chord state of a batch no worker will ever run
    os.remove(manifest)
    res.update(runs[0])
    res["runs"] = runs
    res["targets"] = {"items_per_s": C.target(res["items_per_s"], ">=", TARGET_RATE),
                      "peak_rss_mb": C.target(res["peak_rss_mb"], "<=", TARGET_RSS)}
    rows = []
    for x in runs:
        main_run = x is runs[0]
        rows += [[f"chunk {x['chunk']}: items/s", x["items_per_s"],
                  f">= {TARGET_RATE:,} {C.verdict(res['targets']['items_per_s'])}"
                  if main_run else "(reported)"],
                 ["  submission seconds", x["seconds"], ""],
                 ["  `itx submit` wall (with start-up)", x["wall_s"], ""],
                 ["  peak RSS of `itx submit` (MB)", x["peak_rss_mb"],
                  f"<= {TARGET_RSS} {C.verdict(res['targets']['peak_rss_mb'])}"
                  if main_run else ""],
                 ["  light-queue messages", x["light_messages_queued"], ""]]
    C.table(f"submit: {n:,}-item JSONL manifest of stored images, every stage, no workers",
            ["figure", "value", "target"], rows)
    C.write("submit", res)
    return res


if __name__ == "__main__":
    C.cli(main)
