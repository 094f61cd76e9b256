"""What a batch costs the broker and the store, per item.

A dedicated redis-server (nothing else talks to it), an S3 store (moto's server, so every
store request is an HTTP request that moto's recorder logs), one light and one heavy worker,
and `itx submit --wait --chunk 32` over N items with every stage on. Figures:

- bytes through Redis per item: the change in ``total_net_input_bytes`` +
  ``total_net_output_bytes`` (INFO stats) across the batch, divided by N. This counts
  everything: task messages (and Redis's copies of unacked ones), results, chord
  bookkeeping, Celery events, worker heartbeats and the submitter's progress polling.
- store requests per item, by method, from moto's request recording across the batch
  (submission, ledger, inputs, stage hand-offs, generated images, result records).

    python benchmarks/broker.py [--quick]
"""
from __future__ import annotations

import json
import os
import re
import urllib.request
from collections import Counter
from urllib.parse import parse_qs, urlparse

try:
    from benchmarks import common as C
    from benchmarks.overhead import itx
except ImportError:  # run as a script
    import common as C
    from overhead import itx

CHUNK = 32
TARGET_BYTES = 2048
BUCKET = "itx-bench"
ENTRY = re.compile(r'"method": "([A-Z]+)", "url": "((?:[^"\\]|\\.)*)"')


def _moto(endpoint: str, action: str) -> None:
    req = urllib.request.Request(f"{endpoint}/moto-api/recorder/{action}", data=b"", method="POST")
    urllib.request.urlopen(req, timeout=10).close()


def classify(entry: dict) -> str:
    """S3 operation of one recorded request (GET/PUT/HEAD/DELETE object, LIST, other)."""
    u = urlparse(entry["url"])
    q = parse_qs(u.query)
    method = entry["method"].upper()
    path = u.path.strip("/")
    if "moto-api" in path:
        return "moto-api"
    is_bucket = "/" not in path
    if method == "GET" and (is_bucket or "list-type" in q or "prefix" in q):
        return "LIST"
    if method == "POST" and "delete" in q:
        return "DELETE"
    return method


def kind(entry: dict) -> str:
    """What a request was for, from its key: inputs, ledger, parts, images, results, ..."""
    key = urlparse(entry["url"]).path.strip("/").split("/", 1)[-1]
    parts = key.split("/")
    if parts[:1] == ["store"]:
        parts = parts[1:]
    if parts[:1] == ["inputs"]:
        return "inputs/"
    if parts[:1] == ["runs"] and len(parts) > 2:
        return f"runs/*/{parts[2]}/"
    return "/".join(parts[:1]) or "(bucket)"


def main(quick: bool = False) -> dict:
    import boto3
    import redis as redislib

    from tests.cluster import redis_server, workers
    from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

    n = 128 if quick else 1024
    tmp = C.tmpdir("itx-bench-broker-")
    C.write_images(tmp / "warm", CHUNK, start=20_000)
    C.write_images(tmp / "in", n)
    rec_file = tmp / "moto-recording.jsonl"
    os.environ["MOTO_RECORDER_FILEPATH"] = str(rec_file)  # moto_server passes our environment on
    opts = [*C.SPEC_OPTS, "--chunk", str(CHUNK)]
    res: dict = {"n": n, "chunk": CHUNK, "spec": opts}
    with redis_server() as redis, moto_server() as endpoint:
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        env = C.worker_base_env(ITX_BROKER_URL=redis.url + "/0",
                                ITX_RESULT_BACKEND=redis.url + "/1",
                                ITX_STORE=f"s3://{BUCKET}/store", AWS_ENDPOINT_URL=endpoint,
                                **DUMMY_CREDENTIALS)
        r = redislib.Redis.from_url(redis.url)

        def stats():
            s = r.info("stats")
            return s["total_net_input_bytes"], s["total_net_output_bytes"], \
                s["total_commands_processed"]

        with workers(env, tag="broker"):
            itx(env, "submit", str(tmp / "warm"), "--batch", "warm", "--wait", *opts)
            _moto(endpoint, "reset-recording")
            _moto(endpoint, "start-recording")
            a = stats()
            p = itx(env, "submit", str(tmp / "in"), "--batch", "meas", "--wait", *opts)
            b = stats()
            _moto(endpoint, "stop-recording")
        if f"{n} items submitted" not in p.stdout:
            raise RuntimeError(f"submission went wrong:\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
        # moto's threads append entries concurrently, so lines can interleave: pick the
        # method and URL of every entry rather than parsing lines (bodies are base64)
        entries = [{"method": m, "url": json.loads(f'"{u}"')}
                   for m, u in ENTRY.findall(rec_file.read_text(errors="replace"))]
    ops = Counter(classify(e) for e in entries)
    ops.pop("moto-api", None)
    what = Counter(f"{classify(e)} {kind(e)}" for e in entries if classify(e) != "moto-api")
    bin_, bout, cmds = (b[0] - a[0]), (b[1] - a[1]), (b[2] - a[2])
    res.update({
        "bytes_per_item": round((bin_ + bout) / n, 1),
        "bytes_in_per_item": round(bin_ / n, 1), "bytes_out_per_item": round(bout / n, 1),
        "bytes_per_chunk": round((bin_ + bout) / (n / CHUNK)),
        "redis_commands_per_item": round(cmds / n, 2),
        "store_requests_per_item": round(sum(ops.values()) / n, 3),
        "store_requests_by_op_per_item": {k: round(v / n, 3) for k, v in sorted(ops.items())},
        "store_requests_by_kind_per_item": {k: round(v / n, 3) for k, v in sorted(what.items())},
    })
    res["target"] = C.target(res["bytes_per_item"], "<=", TARGET_BYTES)
    C.table(f"broker and store: {n} items, chunk {CHUNK}, every stage, s3:// store (moto)",
            ["figure", "per item", "target"],
            [["bytes through Redis (in + out)", res["bytes_per_item"],
              f"<= {TARGET_BYTES} {C.verdict(res['target'])}"],
             ["  into Redis", res["bytes_in_per_item"], ""],
             ["  out of Redis", res["bytes_out_per_item"], ""],
             ["Redis commands", res["redis_commands_per_item"], ""],
             ["store requests", res["store_requests_per_item"], "(reported)"],
             *[[f"  {k}", v, ""] for k, v in res["store_requests_by_kind_per_item"].items()]])
    C.write("broker", res)
    return res


if __name__ == "__main__":
    C.cli(main)
