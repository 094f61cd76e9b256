"""A corpus of bad, odd and hostile inputs through the real pools: a password-protected
redis-server, moto S3 behind a request-logging proxy, real light and heavy workers, `itx submit`.

Every input ends as one record with its specific error, or with correct output where the
input is valid; the workers stay up and go on working; nothing outside the store is read;
the Redis password appears in no log and no record.
"""
from __future__ import annotations

import io
import json
import secrets
import subprocess

import boto3
import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from tests.cluster import BIN, REPO, RedisServer, worker_env, workers
from tests.corpus import write_corpus
from tests.crafted import send_chunk
from tests.faultproxy import FaultProxy
from tests.s3fixture import DUMMY_CREDENTIALS, moto_server

pytestmark = [pytest.mark.faults, pytest.mark.cluster, pytest.mark.slow]
BUCKET, OTHER = "itx-bad", "itx-other"
SPEC = ["--profile", "tiny-random", "--captioners", "blip", "--ocr", "rapidocr",
        "--size", "32x32", "--steps", "2", "--chunk", "8"]
CHUNK_SPEC = {"captioners": ["blip"], "ocr": "rapidocr", "size": "32x32", "steps": 2}
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf"


def text_image(text: str, w=260, h=60) -> Image.Image:
    img = Image.new("RGB", (w, h), "white")
    ImageDraw.Draw(img).text((10, 12), text, font=ImageFont.truetype(FONT, 28), fill="black")
    return img


def noise_png(seed: int, size: tuple[int, int]) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad(model_dir):
    password = "pw-" + secrets.token_hex(12)
    redis = RedisServer(password=password).start()
    try:
        with moto_server() as endpoint, FaultProxy(endpoint) as proxy:
            s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
            s3.create_bucket(Bucket=BUCKET)
            s3.create_bucket(Bucket=OTHER)
            common = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
                      "ITX_STORE": f"s3://{BUCKET}/store", **DUMMY_CREDENTIALS,
                      "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(model_dir),
                      "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1",
                      "ITX_MAX_PIXELS": "1000000", "ITX_MAX_IMAGE_BYTES": "300000"}
            env = {**common, "AWS_ENDPOINT_URL": proxy.url}  # workers: through the proxy
            submit_env = {**common, "AWS_ENDPOINT_URL": endpoint}
            with workers(env, tag="bad") as ws:
                yield {"env": env, "submit_env": submit_env, "s3": s3, "proxy": proxy,
                       "workers": ws, "password": password}
    finally:
        redis.stop()


def itx(env, *args, timeout=300):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env(env), timeout=timeout, cwd=REPO)


def keys(s3, prefix: str, bucket: str = BUCKET) -> list[str]:
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        out += [o["Key"] for o in page.get("Contents", [])]
    return out


def records(s3, batch: str) -> dict[str, dict]:
    def get(k):
        return json.loads(s3.get_object(Bucket=BUCKET, Key=k)["Body"].read())

    return {k.rsplit("/", 1)[-1][:-5]: get(k) for k in keys(s3, f"store/runs/{batch}/results/")}


def kind(rec: dict) -> str | None:
    return rec["error"].split(":", 1)[0] if rec["error"] else None


def all_alive(ws) -> bool:
    return all(w.proc.poll() is None and w.children() for w in ws)


def test_bad_input_corpus_through_real_workers(bad, tmp_path):
    d = tmp_path / "in"
    corpus = write_corpus(d)
    # more inputs the corpus does not have
    Image.new("RGB", (1200, 1000), (90, 120, 200)).save(d / "huge-dimensions.png")  # 1.2 MP
    (d / "too-many-bytes.png").write_bytes(noise_png(1, (400, 400)))  # ~480 KB
    upright = text_image("OPEN 24 HOURS")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    upright.rotate(90, expand=True).save(d / "exif-text.jpg", "JPEG", quality=95,
                                         exif=exif.tobytes())
    text_image("CAFÉ ÜBER").save(d / "unicode-text.png")
    Image.new("RGB", (64, 48), "white").save(d / "blank.png")
    Image.new("RGB", (64, 40), "white").save(d / "blank-ocr-only.png")
    valid = {n for n, (_, exp) in corpus.items() if exp[0] == "ok"} | {
        "exif-text.jpg", "unicode-text.png", "blank.png"}
    expected = {n: exp[1] for n, (_, exp) in corpus.items() if exp[0] == "error"}
    expected.update({"huge-dimensions.png": "too_many_pixels",
                     "too-many-bytes.png": "file_too_large",
                     "blank-ocr-only.png": "empty_prompt",
                     "long-prompt": "prompt_too_long", "unknown-placeholder": "bad_edit_rule",
                     "ftp://example.com/photo.png": "unknown_scheme",
                     "http://169.254.169.254/latest/meta-data/photo.png": "disallowed_host",
                     "missing.png": "not_found"})
    rows = [{"image": str(d / n)} for n in sorted(set(corpus) | valid | {
        "huge-dimensions.png", "too-many-bytes.png"})]
    unicode_edit = "template:{ocr} ☕ 東京 {caption}"
    for row in rows:
        if row["image"].endswith("unicode-text.png"):
            row["edit"] = [unicode_edit]
    rows += [
        {"image": str(d / "blank-ocr-only.png"), "edit": ["template:{ocr}"]},
        {"image": str(d / "photo.png"), "edit": ["template:" + "x" * 2500]},
        {"image": str(d / "photo.jpg"), "edit": ["template:{nope} and {caption}"]},
        {"image": "ftp://example.com/photo.png"},
        {"image": "http://169.254.169.254/latest/meta-data/photo.png"},
        {"image": str(d / "missing.png")},
    ]
    manifest = tmp_path / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    r = itx(bad["submit_env"], "submit", str(manifest), "--batch", "corpus", "--wait", *SPEC)
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    recs = list(records(bad["s3"], "corpus").values())
    assert len(recs) == len(rows)

    def name(rec):
        src = rec["source"]
        return src.rsplit("/", 1)[-1] if src.startswith(str(d)) else src

    by_kind = {}
    out_keys = set(keys(bad["s3"], "store/runs/corpus/images/"))
    for rec in recs:
        n = name(rec)
        if rec["error"]:
            by_kind.setdefault(n, []).append(kind(rec))
            assert rec["outputs"] == []
            continue
        assert n in valid, (n, rec)
        assert rec["captions"]["blip"] and rec["prompt"], n
        assert isinstance(rec["ocr"]["text"], str)
        assert len(rec["outputs"]) == 1 and rec["outputs"][0].split(f"{BUCKET}/", 1)[1] in out_keys
        by_kind.setdefault(n, []).append(None)
    # the three edits on photo.png / photo.jpg / blank-ocr-only.png are their own records
    assert sorted(by_kind.pop("photo.png"), key=str) == sorted([None, "prompt_too_long"], key=str)
    assert sorted(by_kind.pop("photo.jpg"), key=str) == sorted([None, "bad_edit_rule"], key=str)
    assert by_kind.pop("blank-ocr-only.png") == ["empty_prompt"]
    for n, kinds in by_kind.items():
        assert kinds == [expected.get(n)], (n, kinds)
    assert len(out_keys) == sum(1 for rec in recs if not rec["error"])  # no stray outputs
    # valid but odd: read right
    got = {name(rec): rec for rec in recs if not rec["error"]}
    box = got["exif-text.jpg"]["ocr"]["lines"][0]["box"]
    xs, ys = [p[0] for p in box], [p[1] for p in box]
    assert "OPEN" in got["exif-text.jpg"]["ocr"]["text"]
    assert max(xs) - min(xs) > 3 * (max(ys) - min(ys)), "EXIF orientation was not applied"
    uni = got["unicode-text.png"]
    assert "CAFÉ" in uni["ocr"]["text"]
    assert uni["prompt"] == " ".join(f"{uni['ocr']['text']} ☕ 東京 {uni['captions']['blip']}".split())
    assert got["blank.png"]["ocr"] == {"text": "", "lines": []}
    assert got["blank.png"]["prompt"] == got["blank.png"]["captions"]["blip"]
    # the workers are all still up, and still work
    assert all_alive(bad["workers"])
    s = send_chunk(bad["env"], "after-corpus", [{"id": "good", "image": got["photo.bmp"]["image"]}],
                   CHUNK_SPEC)
    assert s["done"] == 1


def test_crafted_chunks_outside_the_store_or_over_limits(bad):
    s3, proxy = bad["s3"], bad["proxy"]
    good = noise_png(5, (40, 30))
    s3.put_object(Bucket=BUCKET, Key="store/inputs/good.png", Body=good)
    s3.put_object(Bucket=BUCKET, Key="store/inputs/big.png", Body=noise_png(6, (400, 400)))
    s3.put_object(Bucket=BUCKET, Key="secret.png", Body=good)  # same bucket, outside the prefix
    s3.put_object(Bucket=OTHER, Key="store/inputs/good.png", Body=good)
    cases = {
        "good": (f"s3://{BUCKET}/store/inputs/good.png", None),
        "foreign-bucket": (f"s3://{OTHER}/store/inputs/good.png", "outside_store"),
        "outside-prefix": (f"s3://{BUCKET}/secret.png", "outside_store"),
        "traversal-uri": (f"s3://{BUCKET}/store/../secret.png", "outside_store"),
        "traversal-key": ("../secret.png", "outside_store"),
        "file-scheme": ("file:///etc/passwd", "outside_store"),
        "http-scheme": ("http://169.254.169.254/latest/meta-data/", "outside_store"),
        "over-size-in-store": ("inputs/big.png", "file_too_large"),
    }
    proxy.reset_counts()
    s = send_chunk(bad["env"], "crafted", [{"id": k, "image": u} for k, (u, _) in cases.items()],
                   CHUNK_SPEC)
    assert s["done"] == 1 and s["failed"] == len(cases) - 1
    recs = records(s3, "crafted")
    assert set(recs) == set(cases)
    for k, (_, exp) in cases.items():
        assert kind(recs[k]) == exp, (k, recs[k]["error"])
    assert len(recs["good"]["outputs"]) == 1
    # no request ever left the store: not the other bucket, not outside the prefix;
    # the object over the size limit was asked for, but its body never read in full
    paths = [p for _, p in proxy.requests]
    assert paths and all(p.startswith(f"/{BUCKET}/store/") for p in paths), paths
    # asking for more outputs per item than the limit: refused by itx submit, and a chunk that
    # comes another way gets the error in its records
    t = send_chunk(bad["env"], "crafted-n", [{"id": "many", "image": cases["good"][0]}],
                   CHUNK_SPEC, n=9)
    assert t["failed"] == 1
    rec = records(s3, "crafted-n")["many"]
    assert kind(rec) == "too_many_outputs" and rec["outputs"] == []
    assert keys(s3, "store/runs/crafted-n/images/") == []
    r = itx(bad["submit_env"], "submit", "s3://itx-bad/store/inputs/good.png", "--n", "9",
            "--batch", "n9", *SPEC)
    assert r.returncode == 2 and "limit of 8" in r.stderr, r.stderr[-2000:]
    assert all_alive(bad["workers"])


def test_redis_password_appears_in_no_log_and_no_record(bad):
    pw = bad["password"]
    for w in bad["workers"]:
        log = w.output()
        assert "redis://:**@127.0.0.1" in log
        assert pw not in log
    for k in keys(bad["s3"], "store/"):
        assert pw.encode() not in bad["s3"].get_object(Bucket=BUCKET, Key=k)["Body"].read()
