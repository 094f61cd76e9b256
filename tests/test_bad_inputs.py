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
import tempfile
from pathlib import Path

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


def _corpus_expectations() -> dict[str, tuple]:
    with tempfile.TemporaryDirectory() as t:
        return {n: exp for n, (_, exp) in write_corpus(Path(t)).items()}


CORPUS = _corpus_expectations()
URLS = {"ftp://example.com/photo.png": "unknown_scheme",
        "http://169.254.169.254/latest/meta-data/photo.png": "disallowed_host"}
# every input of the submitted manifest -> the error kind of each of its records (None: ok)
CASES = {
    **{n: [None if exp[0] == "ok" else exp[1]] for n, exp in CORPUS.items()},
    "huge-dimensions.png": ["too_many_pixels"],  # 1.2 MP, over ITX_MAX_PIXELS
    "too-many-bytes.png": ["file_too_large"],  # ~480 KB, over ITX_MAX_IMAGE_BYTES
    "exif-text.jpg": [None],
    "unicode-text.png": [None],
    "blank.png": [None],
    "blank-ocr-only.png": ["empty_prompt"],  # edit "{ocr}" of an image without text
    "photo.png": [None, "prompt_too_long"],  # plus a row with an oversized edit
    "photo.jpg": [None, "bad_edit_rule"],  # plus a row with an unknown placeholder
    **{u: [k] for u, k in URLS.items()},
    "missing.png": ["not_found"],
}
UNICODE_EDIT = "template:{ocr} ☕ 東京 {caption}"


@pytest.fixture(scope="module")
def corpus(bad, tmp_path_factory):
    """The corpus and more bad, odd and valid inputs, submitted once with `itx submit --wait`:
    the records by input name, the output objects, the manifest's rows and the exit status."""
    tmp = tmp_path_factory.mktemp("corpus")
    d = tmp / "in"
    write_corpus(d)
    Image.new("RGB", (1200, 1000), (90, 120, 200)).save(d / "huge-dimensions.png")
    (d / "too-many-bytes.png").write_bytes(noise_png(1, (400, 400)))
    upright = text_image("OPEN 24 HOURS")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90 degrees clockwise
    upright.rotate(90, expand=True).save(d / "exif-text.jpg", "JPEG", quality=95,
                                         exif=exif.tobytes())
    text_image("CAFÉ ÜBER").save(d / "unicode-text.png")
    Image.new("RGB", (64, 48), "white").save(d / "blank.png")
    Image.new("RGB", (64, 40), "white").save(d / "blank-ocr-only.png")
    files = sorted(set(CORPUS) | {"huge-dimensions.png", "too-many-bytes.png", "exif-text.jpg",
                                  "unicode-text.png", "blank.png"})
    rows = [{"image": str(d / n)} for n in files]
    for row in rows:
        if row["image"].endswith("unicode-text.png"):
            row["edit"] = [UNICODE_EDIT]
    rows += [
        {"image": str(d / "blank-ocr-only.png"), "edit": ["template:{ocr}"]},
        {"image": str(d / "photo.png"), "edit": ["template:" + "x" * 2500]},
        {"image": str(d / "photo.jpg"), "edit": ["template:{nope} and {caption}"]},
        *({"image": u} for u in URLS),
        {"image": str(d / "missing.png")},
    ]
    manifest = tmp / "corpus.jsonl"
    manifest.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    r = itx(bad["submit_env"], "submit", str(manifest), "--batch", "corpus", "--wait", *SPEC)
    by_name: dict[str, list[dict]] = {}
    for rec in records(bad["s3"], "corpus").values():
        src = rec["source"]
        by_name.setdefault(src.rsplit("/", 1)[-1] if src.startswith(str(d)) else src,
                           []).append(rec)
    return {"run": r, "rows": rows, "records": by_name,
            "outputs": set(keys(bad["s3"], "store/runs/corpus/images/"))}


def test_corpus_batch_fails_with_one_record_per_row_and_no_stray_output(corpus):
    r = corpus["run"]
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    recs = [rec for recs in corpus["records"].values() for rec in recs]
    assert len(recs) == len(corpus["rows"])
    assert set(corpus["records"]) == set(CASES)
    assert len(corpus["outputs"]) == sum(1 for rec in recs if not rec["error"])


@pytest.mark.parametrize("name", sorted(CASES))
def test_each_input_ends_as_its_own_records(corpus, name):
    recs = corpus["records"].get(name, [])
    assert sorted((kind(rec) for rec in recs), key=str) == sorted(CASES[name], key=str), \
        [rec["error"] for rec in recs]
    for rec in recs:
        if rec["error"]:
            assert rec["outputs"] == []
            continue
        assert rec["captions"]["blip"] and rec["prompt"]
        assert isinstance(rec["ocr"]["text"], str)
        assert len(rec["outputs"]) == 1
        assert rec["outputs"][0].split(f"{BUCKET}/", 1)[1] in corpus["outputs"]


def ok(corpus, name: str) -> dict:
    return next(rec for rec in corpus["records"][name] if not rec["error"])


def test_exif_orientation_is_applied_before_ocr(corpus):
    rec = ok(corpus, "exif-text.jpg")
    box = rec["ocr"]["lines"][0]["box"]
    xs, ys = [p[0] for p in box], [p[1] for p in box]
    assert "OPEN" in rec["ocr"]["text"]
    assert max(xs) - min(xs) > 3 * (max(ys) - min(ys)), "EXIF orientation was not applied"


def test_unicode_ocr_text_goes_into_a_unicode_prompt(corpus):
    uni = ok(corpus, "unicode-text.png")
    assert "CAFÉ" in uni["ocr"]["text"]
    assert uni["prompt"] == " ".join(f"{uni['ocr']['text']} ☕ 東京 {uni['captions']['blip']}".split())


def test_blank_image_has_no_text_and_its_caption_is_the_prompt(corpus):
    blank = ok(corpus, "blank.png")
    assert blank["ocr"] == {"text": "", "lines": []}
    assert blank["prompt"] == blank["captions"]["blip"]


def test_workers_outlive_the_corpus_and_still_work(bad, corpus):
    assert all_alive(bad["workers"])
    s = send_chunk(bad["env"], "after-corpus",
                   [{"id": "good", "image": ok(corpus, "photo.bmp")["image"]}], CHUNK_SPEC)
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
