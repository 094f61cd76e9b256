"""Datasets as inputs (issue 18): WebDataset shards and Parquet tables, their metadata carried
into every record, ids from (shard, key)/(file, row) so reruns recompute nothing, and each bad
input a specific error record. Shards are written with the ``webdataset`` library's writer and
with plain ``tarfile``; tables with pyarrow; URL cells served over loopback HTTP; runs are
real ``itx run`` subprocesses."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from orchestrator.inputs import iter_inputs
from tests.datasets import (caption_of, hf_struct, jpeg, parquet, png, records, sample, tar_shard,
                            wds_shard)

REPO = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent / "itx"
ITX = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "orchestrator.cli"]
SPEC = ["--profile", "tiny-random", "--ocr", "none", "--captioners", "blip", "--generator",
        "none"]


def itx(*args, env=None, timeout=600):
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([*ITX, *args], capture_output=True, text=True, env=e, timeout=timeout,
                          cwd=REPO)


def kind(rec: dict) -> str | None:
    return rec["error"].split(":", 1)[0] if rec.get("error") else None


class Site:
    """Images over HTTP on loopback; any other path is a 404."""

    def __init__(self, files: dict[str, bytes]):
        class H(BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                body = files.get(self.path)
                self.send_response(200 if body is not None else 404)
                body = body if body is not None else b"no"
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"


@pytest.fixture
def site():
    s = Site({f"/img{i}.jpg": jpeg(100 + i) for i in range(3)})
    yield s
    s.server.shutdown()


# --- reading: no models, straight through the input layer ----------------------------------
def test_shards_by_path_glob_and_brace_range_keep_keys_and_metadata(tmp_path):
    keys = {n: [f"{n:03d}{i:04d}" for i in range(4)] for n in range(3)}
    for n, ks in keys.items():
        wds_shard(tmp_path / "shards" / f"{n:03d}.tar", ks, seed=10 * n)
    every = [k for ks in keys.values() for k in ks]

    brace = list(iter_inputs([str(tmp_path / "shards" / "{000..002}.tar")]))
    assert [it.meta["key"] for it in brace] == every
    assert all(it.error is None and it.data and it.ext == ".jpg" for it in brace)
    first = brace[0]
    assert first.meta["shard"].endswith("000.tar") and first.meta["txt"] == caption_of(every[0])
    assert first.meta["caption"] == caption_of(every[0])  # the txt member, as {meta:caption}
    assert first.meta["url"] == f"http://example.com/{every[0]}.jpg"  # json fields
    assert first.source.endswith("000.tar#0000000")
    assert [it.meta["key"] for it in iter_inputs([str(tmp_path / "shards" / "*.tar")])] == every
    one = list(iter_inputs([str(tmp_path / "shards" / "001.tar")]))
    assert [it.data for it in one] == [it.data for it in brace[4:8]]
    assert len({it.ident for it in brace}) == 12


def test_a_shard_is_read_as_a_forward_only_stream(tmp_path):
    """A shard from a pipe (no seeking, no size): samples come out while it is being written."""
    from orchestrator.inputs.webdataset import iter_tar

    data = tar_shard(tmp_path / "s.tar", [sample(f"k{i}", i) for i in range(50)]).read_bytes()
    r, w = os.pipe()
    half, in_time = threading.Event(), []

    def writer():
        with os.fdopen(w, "wb") as f:
            f.write(data[:len(data) // 2])
            f.flush()
            # the rest only once the reader has produced items from the first half
            in_time.append(half.wait(10))
            f.write(data[len(data) // 2:])

    threading.Thread(target=writer, daemon=True).start()
    got = []
    with os.fdopen(r, "rb") as f:
        for it in iter_tar(f, "pipe.tar", max_bytes=1 << 20):
            got.append(it.meta["key"])
            if len(got) == 10:
                half.set()
    assert got == [f"k{i}" for i in range(50)] and in_time == [True]


def test_meta_values_are_capped(tmp_path):
    tar_shard(tmp_path / "s.tar", [("k", {"png": png(1), "txt": b"x" * 5000,
                                          "json": json.dumps({"n": 3, "l": [1, 2]}).encode()})])
    (it,) = iter_inputs([str(tmp_path / "s.tar")])
    assert it.ext == ".png" and len(it.meta["txt"]) == 1000 and it.meta["n"] == 3
    assert it.meta["l"] == "[1, 2]"


def test_bad_shards_keep_what_they_can(tmp_path):
    good = [sample(f"k{i}", i) for i in range(6)]
    full = tar_shard(tmp_path / "full.tar", good)
    data = full.read_bytes()
    cut = data.index(b"\xff\xd8", data.index(b"k4.jpg")) + 100  # inside k4's image
    (tmp_path / "cut.tar").write_bytes(data[:cut])
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file " * 50)
    (tmp_path / "empty.tar").write_bytes(b"")
    tar_shard(tmp_path / "noimg.tar", [sample("a", 1), ("b", {"txt": b"only text"}),
                                       sample("c", 2)])
    items = {str(p.name): list(iter_inputs([str(p)])) for p in sorted(tmp_path.glob("*.tar"))}

    cut_items = items["cut.tar"]
    assert [it.meta["key"] for it in cut_items[:-1]] == ["k0", "k1", "k2", "k3"]
    assert cut_items[-1].error.startswith("truncated_shard: ") and "after 4 samples" in \
        cut_items[-1].error and cut_items[-1].source.endswith("cut.tar")
    for name in ("junk.tar", "empty.tar"):  # cannot be read at all: one record for the shard
        (only,) = items[name]
        assert only.error.startswith("bad_shard: ") and only.source.endswith(name)
    noimg = items["noimg.tar"]
    assert [(it.meta["key"], (it.error or "").split(":")[0]) for it in noimg] == \
        [("a", ""), ("b", "no_image_member"), ("c", "")]


def test_tables_by_type_name_and_option(tmp_path, site):
    import pyarrow as pa

    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "a.jpg").write_bytes(jpeg(1))
    hf = parquet(tmp_path / "hf.parquet", {
        "image": hf_struct([(jpeg(1), "a.jpg"), (None, "lost.jpg"), (png(2), None)]),
        "text": ["first", "second", "third"], "other": [1, 2, 3]}, row_group_size=2)
    items = list(iter_inputs([str(hf)]))
    assert [it.ext for it in items] == [".jpg", None, ".png"]
    assert items[1].error.startswith("null_image: row 1 ") and "lost.jpg" in items[1].error
    assert items[0].meta == {"text": "first", "shard": str(hf), "row": 0}  # "other" not kept
    kept = list(iter_inputs([str(hf)], keep_columns=["other"]))
    assert kept[2].meta == {"other": 3, "shard": str(hf), "row": 2}

    binary = parquet(tmp_path / "bin.parquet", {"jpg": pa.array([jpeg(3)], pa.binary()),
                                                "caption": ["c"]})
    (b,) = iter_inputs([str(binary)])
    assert b.data == jpeg(3) and b.meta["caption"] == "c"

    paths = parquet(tmp_path / "paths.parquet", {"file_name": ["img/a.jpg", "img/none.jpg"]})
    p = list(iter_inputs([str(paths)]))
    assert p[0].path == tmp_path / "img" / "a.jpg" and p[1].path == tmp_path / "img/none.jpg"

    urls = parquet(tmp_path / "urls.parquet", {"url": [site.url("/img0.jpg")],
                                               "TEXT": ["laion alt"], "key": ["000000001"]})
    (u,) = iter_inputs([str(urls)])
    assert u.uri == site.url("/img0.jpg") and u.meta["key"] == "000000001"

    (missing,) = iter_inputs([str(urls)], image_column="image")
    assert missing.error.startswith("missing_column: ") and "'image'" in missing.error
    none = parquet(tmp_path / "none.parquet", {"caption": ["x"], "n": [1]})
    (no,) = iter_inputs([str(none)])
    assert no.error.startswith("no_image_column: ") and "--image-column" in no.error
    (tmp_path / "junk.parquet").write_bytes(b"PAR1 not really")
    (junk,) = iter_inputs([str(tmp_path / "junk.parquet")])
    assert junk.error.startswith("bad_table: ")


def test_importing_inputs_does_not_import_torch():
    code = ("import sys, orchestrator.inputs, orchestrator.inputs.webdataset, "
            "orchestrator.inputs.parquet; assert 'torch' not in sys.modules, 'torch'")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr


# --- end to end: itx run ------------------------------------------------------------------
@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("ds")
    wds_shard(d / "shards" / "000.tar", ["a0", "a1", "a2"], seed=1)
    tar_shard(d / "shards" / "001.tar", [sample("b0", 11), ("b1", {"txt": b"no image"}),
                                         ("b2", {"jpg": b"\xff\xd8 not a jpeg", "txt": b"x"}),
                                         sample("b3", 13, "png")])
    return d


def test_itx_run_over_shards_carries_meta_into_records_and_prompts(dataset, tmp_path):
    out = tmp_path / "out"
    r = itx("run", str(dataset / "shards" / "{000..001}.tar"), "--out", str(out), *SPEC,
            "--edit", "template:{caption}, {meta:caption} [{meta:nothing}]")
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]  # two bad samples
    assert "Traceback" not in r.stderr
    recs = records(out)
    assert [x["meta"]["key"] for x in recs] == ["a0", "a1", "a2", "b0", "b1", "b2", "b3"]
    by = {x["meta"]["key"]: x for x in recs}
    assert kind(by["b1"]) == "no_image_member" and kind(by["b2"]) == "not_an_image", by["b2"]
    for k in ("a0", "a1", "a2", "b0", "b3"):
        x = by[k]
        assert x["error"] is None and x["captions"]["blip"]
        assert x["prompt"] == f"{x['captions']['blip']}, {caption_of(k)} []"
        assert x["meta"]["shard"].endswith(("000.tar", "001.tar")) and x["image"]
    assert by["a0"]["meta"]["width"] == 40  # a json member's field


def test_rerun_recomputes_nothing_and_grown_shards_do_only_new_samples(dataset, tmp_path):
    shards = tmp_path / "shards"
    wds_shard(shards / "000.tar", ["k0", "k1"], seed=5)
    out = tmp_path / "out"
    ref = str(shards / "*.tar")
    r = itx("run", ref, "--out", str(out), *SPEC)
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    results = out / "runs" / "run" / "results"
    first = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert len(first) == 2

    r = itx("run", ref, "--out", str(out), *SPEC)  # the same shards again: nothing recomputed
    assert r.returncode == 0 and "2 items, 2 ok" in r.stdout, r.stdout + r.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")} == first

    wds_shard(shards / "000.tar", ["k0", "k1", "k2"], seed=5)  # the shard gained a sample
    wds_shard(shards / "001.tar", ["m0"], seed=50)             # and a new shard came
    r = itx("run", ref, "--out", str(out), *SPEC)
    assert r.returncode == 0 and "4 items, 4 ok" in r.stdout, r.stdout + r.stderr[-2000:]
    now = {p.name: p.stat().st_mtime_ns for p in results.glob("*.json")}
    assert {k: now[k] for k in first} == first and len(now) == 4
    assert [x["meta"]["key"] for x in records(out)] == ["k0", "k1", "k2", "m0"]


def test_itx_run_over_parquet_urls_paths_and_structs(tmp_path, site):
    (tmp_path / "img").mkdir()
    (tmp_path / "img" / "p.jpg").write_bytes(jpeg(7))
    tables = tmp_path / "t"
    parquet(tables / "urls.parquet", {"url": [site.url("/img0.jpg"), site.url("/gone.jpg"),
                                              site.url("/img1.jpg")],
                                      "caption": ["u0", "u1", "u2"]})
    parquet(tables / "paths.parquet", {"path": ["../img/p.jpg"], "alt": ["p0"]})
    parquet(tables / "hf.parquet", {"image": hf_struct([(jpeg(8), "x.jpg"), (None, None)]),
                                    "text": ["h0", "h1"]})
    parquet(tables / "nocol.parquet", {"url": [site.url("/img2.jpg")]})
    out = tmp_path / "out"
    origin = site.url("/").rstrip("/")  # http://127.0.0.1:PORT, on loopback: opted in
    env = {"ITX_HTTP_ALLOW_HOSTS": json.dumps([origin]), "ITX_HTTP_ALLOW_PRIVATE": "true"}
    r = itx("run", str(tables / "urls.parquet"), str(tables / "paths.parquet"),
            str(tables / "hf.parquet"), "--out", str(out), *SPEC,
            "--input-root", str(tmp_path / "img"), env=env)  # ../img: a root the user names
    assert r.returncode == 1, r.stdout + r.stderr[-3000:]
    recs = records(out)
    got = [(x["meta"]["row"], kind(x)) for x in recs]
    assert got == [(0, None), (1, "http_error"), (2, None), (0, None), (0, None),
                   (1, "null_image")], recs
    assert [x["meta"].get("caption") or x["meta"].get("alt") or x["meta"].get("text")
            for x in recs] == ["u0", "u1", "u2", "p0", "h0", "h1"]
    assert "HTTP 404" in recs[1]["error"]
    assert all(x["captions"].get("blip") for x in recs if not x["error"])

    r = itx("run", str(tables / "nocol.parquet"), "--image-column", "image_url", "--out",
            str(tmp_path / "out2"), *SPEC, env=env)
    (rec,) = records(tmp_path / "out2")
    assert r.returncode == 1 and kind(rec) == "missing_column", rec
    r = itx("run", str(tables / "nocol.parquet"), "--keep-columns", "url", "--out",
            str(tmp_path / "out3"), *SPEC, env=env)
    (rec,) = records(tmp_path / "out3")
    assert r.returncode == 0 and rec["meta"]["url"] == site.url("/img2.jpg"), rec
