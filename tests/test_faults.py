"""Faults inflicted on real processes mid-batch: kill -9 of workers (parents and pool
processes), SIGKILL of Redis (append-only) and its restart, a flaky S3 endpoint (503s and
stalls through tests/faultproxy.py), and a cold shutdown. Every batch must end with exactly one
record per item and exactly one output object per generated image.

    pytest -m faults            # these, test_security.py and test_bad_inputs.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from tests.cluster import BIN, REPO, RedisServer, Worker, free_port, worker_env
from tests.faultproxy import FaultProxy
from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.slow]
BUCKET = "itx-faults"
SPEC = ["--profile", "tiny-random", "--captioners", "blip", "--size", "32x32", "--steps", "2",
        "--chunk", "8"]


@pytest.fixture(scope="module")
def ft(model_dir, tmp_path_factory):
    # append-only Redis on a fixed port: it can be killed and started again on the same data
    redis = RedisServer(port=free_port(), appendonly=True).start()
    images = tmp_path_factory.mktemp("images")
    for i in range(200):
        a = np.random.default_rng(i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        Image.fromarray(a).save(images / f"img{i:04d}.png")
    try:
        with moto_server() as endpoint, FaultProxy(endpoint, stall_s=3) as proxy:
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
            s3.create_bucket(Bucket=BUCKET)
            yield {"redis": redis, "proxy": proxy, "endpoint": endpoint, "s3": s3,
                   "model_dir": model_dir, "images": images}
    finally:
        redis.stop()


def envs(ft, db: int, **extra) -> tuple[dict, dict]:
    """(workers' env, itx submit's env): workers reach S3 through the fault proxy."""
    common = {"ITX_BROKER_URL": f"{ft['redis'].url}/{db}",
              "ITX_RESULT_BACKEND": f"{ft['redis'].url}/{db + 1}",
              "ITX_STORE": f"s3://{BUCKET}/store", **DUMMY_CREDENTIALS,
              "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(ft["model_dir"]),
              "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "ITX_VISIBILITY_TIMEOUT": "10",
              **extra}
    return {**common, "AWS_ENDPOINT_URL": ft["proxy"].url}, \
        {**common, "AWS_ENDPOINT_URL": ft["endpoint"]}


def inputs(ft, tmp_path: Path, n: int) -> Path:
    d = tmp_path / "in"
    d.mkdir()
    for i in range(n):
        (d / f"img{i:04d}.png").symlink_to(ft["images"] / f"img{i:04d}.png")
    return d


def itx(env, *args, timeout=300):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env(env), timeout=timeout, cwd=REPO)


def keys(s3, prefix: str) -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def n_records(s3, batch: str) -> int:
    return len(keys(s3, f"store/runs/{batch}/results/"))


def wait_records(s3, batch: str, n: int, timeout: float, stall: float | None = None) -> int:
    """Wait for ``n`` records; give up after ``timeout``, or after ``stall`` s without one."""
    t0 = last_t = time.monotonic()
    last = -1
    while True:
        got = n_records(s3, batch)
        now = time.monotonic()
        if got != last:
            last, last_t = got, now
        if got >= n or now - t0 > timeout or (stall and now - last_t > stall):
            return got
        time.sleep(0.5)


def exactly_once(s3, batch: str, n: int) -> list[dict]:
    """One record per submitted item, all good, one output object per record, nothing else."""
    ledger = []
    for k in keys(s3, f"store/runs/{batch}/items.jsonl.gz"):  # what `gc` kept of the ledgers
        import gzip
        body = gzip.decompress(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
        ledger += [json.loads(x)["id"] for x in body.splitlines()]
    for k in keys(s3, f"store/runs/{batch}/chunks/"):
        ledger += json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())["ids"]
    assert len(set(ledger)) == n  # a --resume may list a stalled item in a new chunk too
    rec_keys = keys(s3, f"store/runs/{batch}/results/")
    recs = [json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read()) for k in rec_keys]
    assert sorted(r["id"] for r in recs) == sorted(set(ledger))
    bad = [r["error"] for r in recs if r["error"]]
    assert not bad, bad[:5]
    outs = keys(s3, f"store/runs/{batch}/images/")
    assert len(outs) == n, f"{len(outs)} output objects for {n} items"
    assert sorted(u.split(f"{BUCKET}/", 1)[1] for r in recs for u in r["outputs"]) == sorted(outs)
    for r in recs:
        assert r["captions"]["blip"] and r["ocr"] is not None and r["prompt"]
    return recs


def busy(w: Worker) -> bool:
    """The worker holds a task message it has not finished (so it is unacked in Redis)."""
    log = w.output()
    return log.count("] received") > log.count("] succeeded in") + log.count("] retry:") \
        + log.count("] raised unexpected")


def running(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start(env, *names) -> list[Worker]:
    ws = [Worker(n.split("-")[0], env, n) for n in names]
    for w in ws:
        w.wait_ready()
    return ws


# --- (a) kill -9 ------------------------------------------------------------------------------
def kill9_when_busy(w: Worker, timeout: float = 60) -> None:
    """kill -9 the worker's parent and pool processes while it holds an unfinished task."""
    deadline = time.monotonic() + timeout
    while not busy(w) and time.monotonic() < deadline:
        time.sleep(0.02)
    kids = w.children()
    assert busy(w) and kids, f"{w.name} never got busy"
    w.kill9()
    time.sleep(0.3)
    assert w.proc.poll() == -signal.SIGKILL
    assert not any(running(pid) for pid in kids), "a pool process survived"


def test_kill9_light_and_heavy_workers_mid_batch(ft, tmp_path):
    wenv, senv = envs(ft, 0)
    d = inputs(ft, tmp_path, 200)
    s3 = ft["s3"]
    ws = []
    try:
        light, heavy = start(wenv, "light-a1", "heavy-a1")
        ws += [light, heavy]
        r = itx(senv, "submit", str(d), "--batch", "k9", *SPEC)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        # the light pool first, after a quarter of its header tasks (records come later:
        # the heavy pool composes and generates)
        deadline = time.monotonic() + 180
        while light.output().count("] succeeded in") < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        kill9_when_busy(light)
        light_at = n_records(s3, "k9")
        ws += start(wenv, "light-a2")
        # then the heavy pool, in the middle of the batch
        assert wait_records(s3, "k9", 64, 180) >= 64
        kill9_when_busy(heavy)
        heavy_at = n_records(s3, "k9")
        assert heavy_at < 200, "the batch ended before the kill"
        ws += start(wenv, "heavy-a2")
        assert wait_records(s3, "k9", 200, 240) == 200
        time.sleep(2)  # a late duplicate run, if any, would add objects now
        recs = exactly_once(s3, "k9", 200)
    finally:
        for w in ws:
            w.stop()
    attempts = Counter(r["attempts"] for r in recs)
    print(f"kill -9 light at {light_at}, heavy at {heavy_at} of 200 records; "
          f"attempts per record: {dict(attempts)}")
    # the killed workers' unacked messages were redelivered (the broker marks them) and re-run
    assert max(attempts) >= 2, attempts


# --- (b) Redis SIGKILL and restart --------------------------------------------------------------
def test_redis_killed_and_restarted_mid_batch(ft, tmp_path):
    wenv, senv = envs(ft, 2)
    d = inputs(ft, tmp_path, 96)
    redis = ft["redis"]
    ws = []
    try:
        ws += start(wenv, "light-b", "heavy-b")
        r = itx(senv, "submit", str(d), "--batch", "rk", *SPEC)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        light = ws[0]  # mid-batch: the light pool half-way through its header tasks
        deadline = time.monotonic() + 180
        while light.output().count("] succeeded in") < 12 and time.monotonic() < deadline:
            time.sleep(0.1)
        redis.kill()  # SIGKILL: no shutdown save, only what the append-only file has
        at_kill = n_records(ft["s3"], "rk")
        time.sleep(1)
        redis.start()  # same port, same directory
        got = wait_records(ft["s3"], "rk", 96, 150, stall=20)
        resumed = got < 96
        if resumed:  # what docs/guarantees.md says to do after a broker restart
            r = itx(senv, "submit", "--batch", "rk", "--resume", "--wait", timeout=300)
            assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        exactly_once(ft["s3"], "rk", 96)
        # the workers rode it out: same processes, reconnected
        assert all(w.proc.poll() is None for w in ws)
        log = "".join(w.output() for w in ws)
        assert "Connection to broker lost" in log or "Cannot connect to" in log
    finally:
        for w in ws:
            w.stop()
    print(f"redis killed at {at_kill}/96 records; --resume needed: {resumed} ({got}/96 before)")
    # --resume is needed when a header task finished just as Redis died: its result could
    # not join the chord, so that chunk's compose never ran (docs/guarantees.md, section 2)


# --- (c) a flaky store --------------------------------------------------------------------------
def test_flaky_store_503s_and_stalls(ft, tmp_path):
    wenv, senv = envs(ft, 4, ITX_S3_MAX_ATTEMPTS="3", ITX_S3_READ_TIMEOUT="1",
                      ITX_S3_CONNECT_TIMEOUT="1", ITX_VISIBILITY_TIMEOUT="300")
    d = inputs(ft, tmp_path, 48)
    proxy = ft["proxy"]
    ws = []
    try:
        ws += start(wenv, "light-c", "heavy-c")
        proxy.reset_counts()
        proxy.set(fail=0.2, stall=0.05)
        r = itx(senv, "submit", str(d), "--batch", "flaky", "--wait", *SPEC, timeout=400)
        proxy.set(0, 0)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        recs = exactly_once(ft["s3"], "flaky", 48)
    finally:
        proxy.set(0, 0)
        for w in ws:
            w.stop()
    counts = dict(proxy.counts)
    retries = Counter(r["store_retries"] for r in recs)
    attempts = Counter(r["attempts"] for r in recs)
    print(f"proxy: {counts}; store_retries per record: {dict(retries)}; attempts: {dict(attempts)}")
    assert counts["failed"] > 0 and counts["stalled"] > 0
    # the records say what it took: botocore's retries, and Celery's if botocore gave up
    assert max(retries) > 1 or max(attempts) > 1
    assert sum(r["store_retries"] for r in recs) > 0


# --- (d) cold shutdown --------------------------------------------------------------------------
def test_cold_shutdown_puts_a_running_task_back_at_once(ft, tmp_path):
    """SIGQUIT: the worker waits ITX_SOFT_SHUTDOWN_TIMEOUT for its running task, cancels it,
    and its message goes back on the queue now, not after the (here 600 s) visibility timeout."""
    wenv, senv = envs(ft, 6, ITX_SOFT_SHUTDOWN_TIMEOUT="1", ITX_VISIBILITY_TIMEOUT="600",
                      ITX_MAX_STEPS="300")  # a long task: over the default cap on steps
    d = inputs(ft, tmp_path, 8)
    ws = []
    try:
        ws += start(wenv, "light-d", "heavy-d1")
        heavy = ws[1]
        r = itx(senv, "submit", str(d), "--batch", "soft", *SPEC[:-4], "--steps", "300")
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        deadline = time.monotonic() + 120
        while "itx.generate[" not in heavy.output() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1)  # the generate task is running
        assert busy(heavy)
        t0 = time.monotonic()
        os.kill(heavy.proc.pid, signal.SIGQUIT)
        heavy.proc.wait(30)
        assert time.monotonic() - t0 < 20
        assert n_records(ft["s3"], "soft") == 0
        ws += start(wenv, "heavy-d2")
        assert wait_records(ft["s3"], "soft", 8, 120) == 8  # far less than 600 s
        recs = exactly_once(ft["s3"], "soft", 8)
    finally:
        for w in ws:
            w.stop()
    assert all(r["attempts"] == 2 for r in recs), [r["attempts"] for r in recs]


# --- a worker never dies of one item --------------------------------------------------------------
def test_a_task_over_its_time_limit_gives_error_records_and_the_worker_goes_on(ft, tmp_path):
    """generate overruns its soft limit (ITX_HEAVY_TIME_LIMIT less 5 s): the chunk's unfinished
    items get `timeout` error records (a mini-batch that finished before keeps its stored
    images); the same heavy worker process then runs the next batch."""
    # soft limit: 3 s. A generate task of 4 items at 500 steps and 128x128 takes ~10 s on an
    # idle CPU (400 steps at 32x32 took ~2.3 s there: inside the limit, the test failed when
    # the machine was quiet); the limit cuts it at 3 s, so the larger task costs no time
    wenv, senv = envs(ft, 8, ITX_HEAVY_TIME_LIMIT="8", ITX_MAX_STEPS="500")
    d = inputs(ft, tmp_path, 8)
    ws = []
    try:
        # the heavy worker loads its model at start (ITX_PRELOAD), so the time goes to denoising
        ws += start(wenv, "light-e") + start({**wenv, "ITX_PRELOAD": "true"}, "heavy-e")
        heavy = ws[1]
        r = itx(senv, "submit", str(d), "--batch", "slow", "--wait", *SPEC[:-6], "--size",
                "128x128", "--steps", "500")
        assert r.returncode == 1, r.stdout + r.stderr[-3000:]
        recs = [json.loads(ft["s3"].get_object(Bucket=BUCKET, Key=k)["Body"].read())
                for k in keys(ft["s3"], "store/runs/slow/results/")]
        assert len(recs) == 8
        late = [r for r in recs if r["error"]]
        assert late and all(r["error"] == "timeout: generate overran its time limit"
                            and r["outputs"] == [] for r in late)
        assert all(r["captions"]["blip"] for r in recs)
        done = [u for r in recs if not r["error"] for u in r["outputs"]]
        assert all(u for u in done) and len(done) == len(recs) - len(late)
        assert sorted(keys(ft["s3"], "store/runs/slow/images/")) == sorted(
            u.split(f"{BUCKET}/", 1)[1] for u in done)
        pid = heavy.proc.pid
        r = itx(senv, "submit", str(d), "--batch", "fast", "--wait", *SPEC)
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        exactly_once(ft["s3"], "fast", 8)
        assert heavy.proc.poll() is None and heavy.proc.pid == pid
    finally:
        for w in ws:
            w.stop()
