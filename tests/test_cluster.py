"""Distributed pools, as users run them: a real redis-server, a real S3 endpoint (moto over
HTTP), real `celery -A workers worker -Q light|heavy` processes, Flower, and `itx submit`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from tests.cluster import BIN, FLOWER_CMD, REPO, free_port, redis_server, wait_port, worker_env, workers
from tests.corpus import write_corpus
from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BUCKET = "itx-test"
STAGE_OPTS = ["--captioners", "blip,git", "--vqa", "what is this?", "--size", "32x32",
              "--steps", "2", "--profile", "tiny-random"]


def make_images(d: Path, n: int, start: int = 0, size=(64, 48)) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        rng = np.random.default_rng(i)
        a = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        p = d / f"img{i:04d}.png"
        Image.fromarray(a).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def cluster(model_dir):
    with redis_server() as redis, moto_server() as endpoint:
        env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": f"s3://{BUCKET}/store", "AWS_ENDPOINT_URL": endpoint,
               **DUMMY_CREDENTIALS, "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(model_dir),
               "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "FLOWER_UNAUTHENTICATED_API": "true"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        fport = free_port()
        flower = subprocess.Popen(
            [str(BIN / "celery"), *FLOWER_CMD[1:], f"--port={fport}", "--address=127.0.0.1"],
            env=worker_env(env), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(fport, 60, flower)
            with workers(env, tag="redis") as ws:
                yield {"env": env, "s3": s3, "redis": redis, "flower": f"http://127.0.0.1:{fport}",
                       "workers": ws}
        finally:
            flower.terminate()
            flower.wait(10)


def itx(env, *args, timeout=600, **kw):
    e = {**worker_env(env)}
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=REPO, **kw)


def store_keys(s3, prefix):
    keys = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        keys += [o["Key"] for o in page.get("Contents", [])]
    return keys


def records(s3, batch):
    out = {}
    for k in store_keys(s3, f"store/runs/{batch}/results/"):
        out[k.rsplit("/", 1)[-1][:-5]] = json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())
    return out


def check_batch(cluster, batch, n_good, bad_kinds):
    s3 = cluster["s3"]
    recs = records(s3, batch)
    assert len(recs) == n_good + len(bad_kinds)
    good = [r for r in recs.values() if not r["error"]]
    bad = [r for r in recs.values() if r["error"]]
    assert len(good) == n_good, [r["error"] for r in bad][:5]
    assert sorted(r["error"].split(":")[0] for r in bad) == sorted(bad_kinds)
    keys = set(store_keys(s3, f"store/runs/{batch}/images/"))
    for r in good:
        assert set(r["captions"]) == {"blip", "git"} and r["vqa"].keys() == {"what is this?"}
        assert len(r["outputs"]) == 1
        for uri in r["outputs"]:
            assert uri.startswith(f"s3://{BUCKET}/store/runs/{batch}/images/")
            assert uri[len(f"s3://{BUCKET}/"):] in keys
    assert len(keys) == n_good  # no orphaned or duplicate output objects
    return recs


def test_batch_of_54_with_bad_images_redis(cluster, tmp_path):
    d = tmp_path / "in"
    make_images(d, 50)
    corpus = write_corpus(tmp_path / "corpus")
    for name in ("empty.jpg", "not-an-image.png", "truncated.jpg", "bomb.png"):
        (d / name).write_bytes(corpus[name][0].read_bytes())
    r = itx(cluster["env"], "submit", str(d), "--batch", "b54", "--wait", "--chunk", "8",
            *STAGE_OPTS)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    assert "batch b54: 54 items submitted" in r.stdout
    check_batch(cluster, "b54", 50, ["empty_file", "not_an_image", "truncated_image",
                                     "too_many_pixels"])
    # status and results come from the store, even after Redis forgot everything
    import redis as redislib
    redislib.Redis.from_url(cluster["redis"].url + "/1").flushdb()
    st = itx(cluster["env"], "status", "b54", "--json")
    assert st.returncode == 0, st.stderr
    status = json.loads(st.stdout)
    assert status["total"] == 54 and status["done"] == 50 and status["failed"] == 4
    assert status["failures"] == {"empty_file": 1, "not_an_image": 1, "truncated_image": 1,
                                  "too_many_pixels": 1}
    assert status["complete"] is True
    out = tmp_path / "manifest.jsonl"
    res = itx(cluster["env"], "results", "b54", "--out", str(out))
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 54 and len({x["id"] for x in lines}) == 54
    # the same batch again recomputes nothing
    before = {k: v["finished_at"] for k, v in records(cluster["s3"], "b54").items()}
    again = itx(cluster["env"], "submit", str(d), "--batch", "b54", "--resume", "--wait",
                *STAGE_OPTS)
    assert "0 items submitted, 54 already done" in again.stdout, again.stdout + again.stderr
    after = {k: v["finished_at"] for k, v in records(cluster["s3"], "b54").items()}
    assert before == after


def test_existing_batch_without_resume_is_refused(cluster, tmp_path):
    make_images(tmp_path, 2, start=900)
    assert itx(cluster["env"], "submit", str(tmp_path), "--batch", "dup", *STAGE_OPTS,
               "--wait").returncode == 0
    r = itx(cluster["env"], "submit", str(tmp_path), "--batch", "dup", *STAGE_OPTS)
    assert r.returncode == 2 and "add --resume" in r.stderr


def test_s3_prefix_input(cluster, tmp_path):
    s3 = cluster["s3"]
    for p in make_images(tmp_path, 6, start=100):
        s3.put_object(Bucket=BUCKET, Key=f"incoming/photos/{p.name}", Body=p.read_bytes())
    s3.put_object(Bucket=BUCKET, Key="incoming/photos/readme.txt", Body=b"not an image")
    r = itx(cluster["env"], "submit", f"s3://{BUCKET}/incoming/photos/", "--batch", "s3in",
            "--wait", *STAGE_OPTS)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = check_batch(cluster, "s3in", 6, [])
    assert sorted(r["source"] for r in recs.values()) == \
        [f"s3://{BUCKET}/incoming/photos/img{i:04d}.png" for i in range(100, 106)]


def test_jsonl_manifest_with_per_item_questions_and_edits(cluster, tmp_path):
    paths = make_images(tmp_path / "imgs", 4, start=200)
    manifest = tmp_path / "m.jsonl"
    with manifest.open("w") as f:
        for i, p in enumerate(paths):
            row = {"image": f"imgs/{p.name}", "questions": [f"question {i}?"]}
            if i == 0:
                row["edit"] = ["template:{vqa:question 0?} plus {caption:git}"]
            f.write(json.dumps(row) + "\n")
    r = itx(cluster["env"], "submit", str(manifest), "--batch", "jsonl", "--wait", *STAGE_OPTS)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = list(records(cluster["s3"], "jsonl").values())
    assert len(recs) == 4
    for rec in recs:
        i = int(Path(rec["source"]).stem[3:]) - 200
        assert set(rec["vqa"]) == {"what is this?", f"question {i}?"}
        if i == 0:
            assert rec["prompt"] == " ".join(
                f"{rec['vqa']['question 0?']} plus {rec['captions']['git']}".split())


def test_interrupted_submission_resumes_without_recomputing(cluster, tmp_path):
    """The manifest streams through a FIFO: chunks are enqueued while it is still being read.
    The submitter is killed part-way; --resume completes the batch; finished items are not
    computed again (their records keep their write times)."""
    paths = make_images(tmp_path / "imgs", 24, start=300)
    lines = [json.dumps({"image": str(p)}) + "\n" for p in paths]
    full = tmp_path / "all.jsonl"
    full.write_text("".join(lines))
    fifo = tmp_path / "stream.jsonl"
    os.mkfifo(fifo)
    proc = subprocess.Popen([str(BIN / "itx"), "submit", str(fifo), "--batch", "res", "--chunk",
                             "4", *STAGE_OPTS], env=worker_env(cluster["env"]), cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    opened: list = []
    t = threading.Thread(target=lambda: opened.append(open(fifo, "w")), daemon=True)
    t.start()
    t.join(60)
    assert opened, "the submitter never opened the manifest: " + (proc.poll() and proc.stderr.read() or "")
    w = opened[0]
    w.write("".join(lines[:10]))
    w.flush()
    s3 = cluster["s3"]
    deadline = time.time() + 240
    while len(records(s3, "res")) < 8 and time.time() < deadline:
        time.sleep(0.5)
    first = records(s3, "res")
    assert len(first) >= 8, "the first chunks were not processed while the input was still open"
    proc.send_signal(signal.SIGKILL)  # interrupted part-way: the rest was never read
    proc.wait()
    try:
        w.close()
    except BrokenPipeError:
        pass
    time.sleep(3)
    done_before = {k: v["finished_at"] for k, v in records(s3, "res").items()}
    assert len(done_before) < 24
    r = itx(cluster["env"], "submit", str(full), "--batch", "res", "--resume", "--wait")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert f"{len(done_before)} already done" in r.stdout
    recs = records(s3, "res")
    assert len(recs) == 24
    for k, t in done_before.items():
        assert recs[k]["finished_at"] == t, "a finished item was computed again"
    st = json.loads(itx(cluster["env"], "status", "res", "--json").stdout)
    assert st["complete"] and st["done"] == 24


def test_flower_sees_both_pools_and_every_stage(cluster):
    base = cluster["flower"]

    def get(path):
        with urllib.request.urlopen(base + path, timeout=20) as r:
            return r.read().decode()

    deadline = time.time() + 60
    while True:
        ws = json.loads(get("/api/workers?refresh=1"))
        names = " ".join(ws)
        if ("light0-redis@" in names and "heavy0-redis@" in names) or time.time() > deadline:
            break
        time.sleep(2)
    assert "light0-redis@" in names and "heavy0-redis@" in names, names
    tasks = json.loads(get("/api/tasks"))
    seen = {t["name"] for t in tasks.values()}
    assert {"itx.stage", "itx.compose", "itx.generate"} <= seen, seen
    metrics = get("/metrics")
    assert "flower_events_total" in metrics


def _rabbit_available() -> bool:
    import socket
    try:
        socket.create_connection(("127.0.0.1", 5672), timeout=1).close()
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _rabbit_available(), reason="no RabbitMQ on 127.0.0.1:5672 "
                    "(.ci/run starts one)")
def test_batch_with_rabbitmq_broker(cluster, tmp_path):
    vhost = f"itx-{os.getpid()}"
    made = subprocess.run(["rabbitmqctl", "add_vhost", vhost], capture_output=True).returncode == 0
    if made:
        subprocess.run(["rabbitmqctl", "set_permissions", "-p", vhost, "guest", ".*", ".*", ".*"],
                       capture_output=True)
    broker = f"amqp://guest:guest@127.0.0.1:5672/{vhost if made else ''}"
    env = {**cluster["env"], "ITX_BROKER_URL": broker,
           "ITX_RESULT_BACKEND": cluster["redis"].url + "/2"}
    d = tmp_path / "in"
    make_images(d, 10, start=500)
    (d / "empty.jpg").write_bytes(b"")
    try:
        with workers(env, tag="amqp"):
            r = itx(env, "submit", str(d), "--batch", "amqp", "--wait", "--chunk", "4",
                    *STAGE_OPTS)
        assert r.returncode == 1, r.stdout + r.stderr[-3000:]
        check_batch(cluster, "amqp", 10, ["empty_file"])
    finally:
        if made:
            subprocess.run(["rabbitmqctl", "delete_vhost", vhost], capture_output=True)


def test_preload_loads_models_in_the_pool_process_not_the_parent(cluster):
    """ITX_PRELOAD=true: each pool process loads its models when it starts, after the fork."""
    from tests.cluster import Worker

    want = {"preloaded ocr:rapidocr", "preloaded caption:blip", "preloaded caption:git"}

    def preloaded() -> list[str]:
        return [x for x in w.output().splitlines() if "preloaded " in x]

    w = Worker("light", {**cluster["env"], "ITX_PRELOAD": "true"}, "light-preload")
    try:
        w.wait_ready()
        # every model of the pool, not just one: a process loads them one after the other
        deadline = time.time() + 120
        while (not want <= {x.split("] ", 1)[-1].strip() for x in preloaded()}
               and "could not preload" not in w.output() and time.time() < deadline):
            time.sleep(0.5)
        lines = preloaded()
        assert want <= {x.split("] ", 1)[-1].strip() for x in lines}, w.output()[-3000:]
        assert all("ForkPoolWorker" in x for x in lines), lines  # never in MainProcess
    finally:
        w.stop()


def test_ocr_on_workers_of_its_own(cluster, tmp_path):
    """ITX_ROUTES=ocr=ocr sends every OCR task to the `ocr` queue: a deployment gives OCR its
    own (CPU) workers, `celery -A workers worker -Q ocr`, and the light pool never runs it."""
    from tests.cluster import Worker

    env = {**cluster["env"], "ITX_ROUTES": "ocr=ocr"}
    w = Worker("ocr", env, "ocr-own").wait_ready()
    try:
        make_images(tmp_path / "in", 6, start=4100)
        r = itx(env, "submit", str(tmp_path / "in"), "--batch", "ownocr", "--wait",
                "--ocr", "rapidocr", "--captioners", "blip", "--generator", "none", timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        recs = records(cluster["s3"], "ownocr")
        assert len(recs) == 6 and not any(v["error"] for v in recs.values())
        assert all(v["ocr"] is not None and v["captions"]["blip"] for v in recs.values())
        assert "runs/ownocr/parts/000000/ocr-rapidocr.json" in w.output()
        assert "caption-blip" not in w.output()  # captions stayed on the light pool
        light = "".join(x.output() for x in cluster["workers"] if x.queue == "light")
        assert "runs/ownocr/parts/000000/caption-blip.json" in light
        assert "ocr-rapidocr" not in light.split("ownocr", 1)[-1]
    finally:
        w.stop()
