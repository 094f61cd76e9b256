"""`itx export` of a manifest with generated images: WebDataset shards read back with the
`webdataset` library, Parquet with pyarrow, JSON Lines; `meta.key` names the samples."""
from __future__ import annotations

import io
import json
import shutil

import pytest
from PIL import Image

from tests.test_run import REPO, itx


@pytest.fixture(scope="module")
def manifest(tmp_path_factory, model_dir):
    d = tmp_path_factory.mktemp("exp")
    (d / "in").mkdir()
    for name in ("chelsea.jpg", "coffee.jpg", "sign.png"):
        shutil.copy(REPO / "examples/images" / name, d / "in" / name)
    out = d / "out"
    r = itx("run", str(d / "in"), "--out", str(out), "--profile", "tiny-random", "--ocr", "none",
            "--captioners", "blip", "--generator", "sd", "--size", "32x32", "--steps", "2",
            "--n", "2", "--edit", "template:{caption} in oil", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    # dataset inputs carry meta.key (issue 18); give one record such a key, with a dot in it
    recs[0]["meta"] = {"key": "coffee.0001", "split": "train"}
    (out / "with-meta.jsonl").write_text("".join(json.dumps(x) + "\n" for x in recs))
    return out / "with-meta.jsonl", recs


def test_webdataset_shards_read_back(manifest, tmp_path):
    path, recs = manifest
    r = itx("export", str(path), "--format", "webdataset", "--out", str(tmp_path / "wds"),
            "--shard-size", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    shards = sorted((tmp_path / "wds").glob("shard-*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar"]
    import webdataset as wds

    got = {s["__key__"]: s for s in wds.WebDataset([str(p) for p in shards], shardshuffle=False)}
    want = {"coffee_0001" if "meta" in x else x["id"]: x for x in recs}
    assert set(got) == set(want)
    for key, s in got.items():
        rec = want[key]
        assert json.loads(s["json"]) == rec
        assert s["txt"].decode() == rec["prompt"] and rec["prompt"].endswith(" in oil")
        src = "png" if rec["source"].endswith(".png") else "jpg"
        assert Image.open(io.BytesIO(s[src])).size == Image.open(
            REPO / "examples/images" / rec["source"]).size  # the stored bytes, not re-encoded
        assert {k for k in s if k.endswith(".png") and k != "png"} == {"0.png", "1.png"}
        assert Image.open(io.BytesIO(s["1.png"])).size == (32, 32)


def test_parquet_keeps_nested_fields_and_jsonl_filters(manifest, tmp_path):
    path, recs = manifest
    r = itx("export", str(path), "--format", "parquet", "--out", str(tmp_path / "pq"))
    assert r.returncode == 0, r.stderr[-2000:]
    import pyarrow.parquet as pq

    t = pq.read_table(tmp_path / "pq" / "shard-000000.parquet")
    rows = {x["id"]: x for x in t.to_pylist()}
    assert len(rows) == 3
    for rec in recs:
        row = rows[rec["id"]]
        assert row["captions"] == rec["captions"] and row["outputs"] == rec["outputs"]
        assert row["ocr"] is None or row["ocr"]["lines"] in ([], None)
    assert rows[recs[0]["id"]]["meta"] == {"key": "coffee.0001", "split": "train"}
    r = itx("export", str(path), "--format", "jsonl", "--out", str(tmp_path / "j"),
            "--where", "meta.split==train")
    assert r.returncode == 0 and "1 records in 1 jsonl shards" in r.stdout, r.stderr
    lines = (tmp_path / "j" / "shard-000000.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [recs[0]["id"]]
    r = itx("export", str(path), "--format", "csv", "--out", str(tmp_path / "c"))
    assert r.returncode == 2 and "choose one of webdataset, parquet, jsonl" in r.stderr
