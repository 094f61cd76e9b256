"""Dataset inputs on S3 through real worker processes: WebDataset shards and a Parquet table
in moto over HTTP, `itx submit` with a real redis-server and a real light pool; the shards
grow and `--resume` submits only the new samples."""
from __future__ import annotations

import json
import subprocess

import boto3
import pytest

from tests.cluster import BIN, REPO, redis_server, worker_env, workers
from tests.datasets import caption_of, hf_struct, parquet, png, wds_shard
from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

pytestmark = [pytest.mark.cluster, pytest.mark.slow]
BUCKET = "itx-ds"
SPEC = ["--profile", "tiny-random", "--ocr", "none", "--captioners", "blip", "--generator",
        "none", "--chunk", "4"]


@pytest.fixture(scope="module")
def cluster(model_dir):
    with redis_server() as redis, moto_server() as endpoint:
        env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": f"s3://{BUCKET}/store", "AWS_ENDPOINT_URL": endpoint,
               **DUMMY_CREDENTIALS, "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(model_dir),
               "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="testing", aws_secret_access_key="testing")
        s3.create_bucket(Bucket=BUCKET)
        with workers(env, light=1, heavy=0, tag="ds"):
            yield {"env": env, "s3": s3}


def itx(env, *args, timeout=600):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env(env), timeout=timeout, cwd=REPO)


def records(s3, batch) -> list[dict]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(
            Bucket=BUCKET, Prefix=f"store/runs/{batch}/results/"):
        for o in page.get("Contents", []):
            out.append(json.loads(s3.get_object(Bucket=BUCKET, Key=o["Key"])["Body"].read()))
    return out


def test_s3_shards_and_table_through_workers_then_resume_after_shards_grow(cluster, tmp_path):
    s3, env = cluster["s3"], cluster["env"]
    for n, keys in enumerate([["a0", "a1", "a2"], ["b0", "b1"]]):
        p = wds_shard(tmp_path / f"{n:03d}.tar", keys, seed=20 * n)
        s3.upload_file(str(p), BUCKET, f"data/shards/{n:03d}.tar")
    cut = tmp_path / "cut.tar"
    data = wds_shard(tmp_path / "full.tar", ["c0", "c1", "c2"], seed=60).read_bytes()
    cut.write_bytes(data[:data.index(b"c2.jpg") + 700])  # breaks inside c2's image
    s3.upload_file(str(cut), BUCKET, "data/shards/002.tar")
    t = parquet(tmp_path / "t.parquet", {"image": hf_struct([(png(3), "p.png"), (None, None)]),
                                         "caption": ["row zero", "row one"]})
    s3.upload_file(str(t), BUCKET, "data/tables/t.parquet")

    r = itx(env, "submit", f"s3://{BUCKET}/data/shards/", f"s3://{BUCKET}/data/tables/t.parquet",
            "--batch", "ds1", "--wait", *SPEC, "--edit", "template:{caption} / {meta:caption}")
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]  # the cut shard, the null row
    assert "batch ds1: 10 items submitted" in r.stdout, r.stdout
    recs = records(s3, "ds1")
    ok = {x["meta"]["key"]: x for x in recs if not x["error"] and "key" in x["meta"]}
    assert sorted(ok) == ["a0", "a1", "a2", "b0", "b1", "c0", "c1"]
    for k, x in ok.items():
        assert x["meta"]["shard"].startswith(f"s3://{BUCKET}/data/shards/")
        assert x["prompt"] == f"{x['captions']['blip']} / {caption_of(k)}"
    bad = sorted(x["error"].split(":")[0] for x in recs if x["error"])
    assert bad == ["null_image", "truncated_shard"], bad
    row0 = next(x for x in recs if x.get("meta", {}).get("row") == 0)
    assert row0["error"] is None and row0["prompt"].endswith("/ row zero")

    # the first shard gains a sample, a new shard arrives: --resume does only those
    p = wds_shard(tmp_path / "000.tar", ["a0", "a1", "a2", "a3"], seed=0)
    s3.upload_file(str(p), BUCKET, "data/shards/000.tar")
    p = wds_shard(tmp_path / "003.tar", ["d0"], seed=80)
    s3.upload_file(str(p), BUCKET, "data/shards/003.tar")
    r = itx(env, "submit", "--batch", "ds1", "--resume", "--wait")
    assert "batch ds1: 2 items submitted, 10 already done" in r.stdout, r.stdout + r.stderr[-2000:]
    keys = sorted(x["meta"]["key"] for x in records(s3, "ds1") if "key" in x.get("meta", {}))
    assert keys == ["a0", "a1", "a2", "a3", "b0", "b1", "c0", "c1", "d0"]

    # a brace range of s3:// shards
    r = itx(env, "submit", f"s3://{BUCKET}/data/shards/{{000..001}}.tar", "--batch", "ds2",
            "--wait", *SPEC)
    assert r.returncode == 0 and "batch ds2: 6 items submitted" in r.stdout, r.stdout + r.stderr
