"""Operating batches as users do: `itx batches | cancel | retry | export | gc`, stage reuse and
poison chunks, against a real redis-server, real worker processes and S3 over HTTP (moto).

Plugin backends (tests/ops_plugins.py, via ITX_PLUGINS) make batches slow on purpose or kill
their pool process, with no model to load."""
from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import boto3
import numpy as np
import pytest
from PIL import Image

from tests.cluster import Worker, redis_server
from tests.s3fixture import DUMMY_CREDENTIALS, moto_server
from tests.test_cluster import itx, records, store_keys

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BUCKET = "itx-test"  # the helpers imported from test_cluster read this bucket
OFF = ["--ocr", "none", "--generator", "none", "--profile", "tiny-random"]


def images(d: Path, n: int, start: int = 0, size=(16, 16)) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        a = np.random.default_rng(i).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
        p = d / f"img{i:04d}.png"
        Image.fromarray(a).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def ops(model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ops")
    calls, poison, pace = tmp / "calls.log", tmp / "poison-on", tmp / "slow-s"
    with redis_server() as redis, moto_server() as endpoint:
        env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": f"s3://{BUCKET}/store", "AWS_ENDPOINT_URL": endpoint,
               **DUMMY_CREDENTIALS, "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(model_dir),
               "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "ITX_PLUGINS": "tests.ops_plugins",
               "ITX_TEST_CALLS": str(calls), "ITX_TEST_POISON": str(poison),
               "ITX_TEST_SLOW_S": "1.0", "ITX_TEST_SLOW_FILE": str(pace)}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        w = Worker("light", env, "light-ops", concurrency=2)
        try:
            w.wait_ready()
            yield {"env": env, "s3": s3, "calls": calls, "poison": poison, "pace": pace,
                   "workers": [w]}
        finally:
            w.stop()


def calls(ops) -> list[float]:
    p = ops["calls"]
    return [float(x.split()[0]) for x in p.read_text().splitlines()] if p.exists() else []


def status(ops, batch) -> dict:
    r = itx(ops["env"], "status", batch, "--json")
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_cancel_stops_a_200_item_batch_within_10_s_and_resume_finishes_it(ops, tmp_path):
    env, s3 = ops["env"], ops["s3"]
    images(tmp_path / "in", 200)
    r = itx(env, "submit", str(tmp_path / "in"), "--batch", "big", "--chunk", "16",
            "--captioners", "slow", *OFF)
    assert r.returncode == 0, r.stderr[-3000:]
    t0 = time.monotonic()
    while len(calls(ops)) < 8:  # the workers are busy with it (records land when chunks end)
        assert time.monotonic() - t0 < 120, "the batch did not start"
        time.sleep(0.2)
    r = itx(env, "cancel", "big")
    t_cancel = time.time()
    assert r.returncode == 0 and "cancelled" in r.stdout, r.stderr
    time.sleep(10)
    n10 = len(store_keys(s3, "store/runs/big/results/"))
    time.sleep(3)
    assert len(store_keys(s3, "store/runs/big/results/")) == n10  # it stopped
    assert n10 < 150, f"{n10} records: the batch ended before the cancel could show anything"
    late = [t for t in calls(ops) if t > t_cancel + 3.0]
    assert not late, f"{len(late)} mini-batches started more than 3 s after the cancel"
    st = status(ops, "big")
    assert st["state"] == "cancelled" and st["total"] == 200
    assert st["done"] == n10 and st["cancelled"] == 200 - n10 and st["failed"] == 0
    # the rest need no slow captioner: 0.1 s a mini-batch (the same worker reads the new pace)
    ops["pace"].write_text("0.1")
    try:
        _other_batches_and_resume(ops, tmp_path, n10)
    finally:
        ops["pace"].unlink()


def _other_batches_and_resume(ops, tmp_path, n10):
    env, s3 = ops["env"], ops["s3"]
    # other batches on the same pool are unaffected
    images(tmp_path / "other", 4, start=5000)
    r = itx(env, "submit", str(tmp_path / "other"), "--batch", "other", "--wait",
            "--captioners", "slow", *OFF, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr[-2000:]
    listed = {b["name"]: b for b in json.loads(itx(env, "batches", "--json").stdout)}
    assert listed["big"]["state"] == "cancelled" and listed["big"]["items"] == 200
    assert listed["other"]["state"] == "done" and listed["other"]["done"] == 4
    # resume runs exactly the items without a record
    before = {k: v["finished_at"] for k, v in records(s3, "big").items()}
    r = itx(env, "submit", "--batch", "big", "--resume", "--wait", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert f"{200 - n10} items submitted, {n10} already done" in r.stdout
    recs = records(s3, "big")
    assert len(recs) == 200 and not [v for v in recs.values() if v["error"]]
    assert all(recs[k]["finished_at"] == t for k, t in before.items())
    assert status(ops, "big")["state"] == "done"


def test_poison_chunk_gets_worker_lost_records_then_retry_replaces_them(ops, tmp_path):
    env, s3 = ops["env"], ops["s3"]
    d = tmp_path / "in"
    images(d, 7, start=6000)
    images(d, 1, start=6100, size=(13, 13))  # img6100.png: the poison
    ops["poison"].write_text("on")
    r = itx(env, "submit", str(d), "--batch", "poison", "--chunk", "4", "--wait",
            "--captioners", "poison", *OFF, timeout=300)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    recs = records(s3, "poison")
    lost = {k: v for k, v in recs.items() if v["error"]}
    assert len(recs) == 8 and len(lost) == 4  # the poison chunk's items, and only those
    assert all(v["error"].startswith("worker_lost:") for v in lost.values())
    assert "died 3 times" in next(iter(lost.values()))["error"]
    worker = ops["workers"][0]
    assert worker.output().count("WorkerLostError") >= 3 and worker.proc.poll() is None
    st = status(ops, "poison")
    assert st["failures"] == {"worker_lost": 4} and st["state"] == "done"
    # the fault is gone: retry only those items, same ids, records replaced, attempts grows
    ops["poison"].unlink()
    r = itx(env, "retry", "poison", "--wait", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "4 items resubmitted" in r.stdout
    after = records(s3, "poison")
    assert set(after) == set(recs)
    for k, old in recs.items():
        if k in lost:
            assert after[k]["error"] is None and after[k]["captions"]["poison"].startswith("fine")
            assert after[k]["attempts"] > old["attempts"]
        else:
            assert after[k]["finished_at"] == old["finished_at"]  # not resubmitted
    r = itx(env, "retry", "poison", "--kind", "not_an_image")
    assert r.returncode == 0 and "0 items resubmitted" in r.stdout


def test_reuse_export_and_gc(ops, tmp_path):
    env, s3 = ops["env"], ops["s3"]
    images(tmp_path / "in", 8, start=7000)
    n0 = len(calls(ops))
    r = itx(env, "submit", str(tmp_path / "in"), "--batch", "ra", "--wait", "--chunk", "4",
            "--captioners", "slow", *OFF, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    n1 = len(calls(ops))
    assert n1 - n0 == 2  # two chunks, one mini-batch each
    # a second batch over the same images with only a new edit rule reuses the captions
    r = itx(env, "submit", str(tmp_path / "in"), "--batch", "rb", "--wait", "--chunk", "4",
            "--captioners", "slow", "--edit", "template:{caption}, in watercolour", *OFF,
            timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(calls(ops)) == n1  # the captioner never ran
    ra, rb = records(s3, "ra"), records(s3, "rb")
    assert set(ra).isdisjoint(rb)  # new ids: the spec changed
    by_src = {v["source"]: v for v in ra.values()}
    for v in rb.values():
        assert v["reused"] == ["caption:slow"] and v["timings_ms"]["caption:slow"] == 0.0
        assert v["captions"] == by_src[v["source"]]["captions"]
        assert v["prompt"].endswith(", in watercolour")
    assert all(v["reused"] == [] for v in ra.values())
    r = itx(env, "submit", str(tmp_path / "in"), "--batch", "rc", "--wait", "--chunk", "4",
            "--captioners", "slow", "--edit", "template:{caption}!", "--no-reuse", *OFF,
            timeout=120)
    assert r.returncode == 0 and len(calls(ops)) == n1 + 2
    assert all(v["reused"] == [] for v in records(s3, "rc").values())

    # --wait cleaned up: no parts/ and no ledgers, a compact item list; status still works
    assert not store_keys(s3, "store/runs/ra/parts/")
    assert not store_keys(s3, "store/runs/ra/chunks/")
    kept = gzip.decompress(s3.get_object(Bucket=BUCKET, Key="store/runs/ra/items.jsonl.gz")
                           ["Body"].read()).splitlines()
    assert sorted(json.loads(x)["id"] for x in kept) == sorted(ra)
    st = status(ops, "ra")
    assert st["total"] == 8 and st["done"] == 8 and st["state"] == "done"
    r = itx(env, "gc", "ra")
    assert r.returncode == 0 and "freed 0 objects" in r.stdout, r.stdout + r.stderr

    # export rb to S3 as WebDataset and Parquet, read back with webdataset and pyarrow
    out = f"s3://{BUCKET}/exports/rb-wds"
    r = itx(env, "export", "rb", "--format", "webdataset", "--out", out, "--shard-size", "3")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "8 records in 3 webdataset shards" in r.stdout
    local = tmp_path / "wds"
    local.mkdir()
    for k in store_keys(s3, "exports/rb-wds/"):
        s3.download_file(BUCKET, k, str(local / Path(k).name))
    import webdataset as wds

    samples = list(wds.WebDataset(sorted(str(p) for p in local.glob("shard-*.tar")),
                                  shardshuffle=False))
    assert len(samples) == 8
    for s in samples:
        rec = json.loads(s["json"])
        assert s["__key__"] == rec["id"] and s["txt"].decode() == rec["prompt"]
        assert Image.open(__import__("io").BytesIO(s["png"])).size == (16, 16)
    r = itx(env, "export", "rb", "--format", "parquet", "--out", str(tmp_path / "pq"),
            "--where", "error==null and captions.slow~16x16")
    assert r.returncode == 0 and "8 records in 1 parquet shards" in r.stdout, r.stderr
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "pq" / "shard-000000.parquet")
    assert t.num_rows == 8 and sorted(t.column("id").to_pylist()) == sorted(rb)
    assert t.column("captions").to_pylist()[0]["slow"].startswith("an image of")
    r = itx(env, "results", "rb", "--out", str(tmp_path / "none.jsonl"), "--where", "attempts>5")
    assert r.returncode == 0 and "0 records" in r.stdout
    r = itx(env, "export", "rb", "--format", "parquet", "--out", str(tmp_path / "x"),
            "--where", "error==")
    assert r.returncode == 2 and "--where" in r.stderr
