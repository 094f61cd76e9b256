"""Staging speed and memory from WebDataset shards, beside the same images in a folder.

100 shards x 500 samples (each a small JPEG with its ``txt`` and ``json``; every JPEG unique,
so the content-addressed store writes every one) are staged into a fresh ``file://`` store:
read by ``orchestrator.inputs`` (shards streamed with ``tarfile``), put into the store by
``orchestrator.submit.stage_items``, one chunk item each, as ``itx run``/``itx submit`` stage
them. The same images as loose files in a folder are staged the same way. Each staging runs
in its own process:

- items/s: items over the seconds from the first input read to the last chunk item out;
- peak RSS: the staging process's maximum resident set (``ru_maxrss`` from wait4).

    python benchmarks/staging.py [--quick]      # --quick: 10 shards x 200 samples
"""
from __future__ import annotations

import io
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    import common as C

SHARDS, SAMPLES = 100, 500
QUICK = (10, 200)
TARGET_RATE = 2000
TARGET_RSS = 300


def unique_jpegs(base: bytes, n: int, start: int):
    """``base`` with a numbered JPEG comment segment after SOI: valid, and every one unique."""
    for i in range(start, start + n):
        com = f"itx-bench {i}".encode()
        yield base[:2] + b"\xff\xfe" + struct.pack(">H", len(com) + 2) + com + base[2:]


def write_data(d: Path, shards: int, samples: int) -> tuple[Path, Path]:
    buf = io.BytesIO()
    C.photo(1, (64, 48)).save(buf, "JPEG", quality=85)
    base = buf.getvalue()
    sd, fd = d / "shards", d / "folder"
    sd.mkdir(parents=True)
    fd.mkdir()
    for s in range(shards):
        with tarfile.open(sd / f"{s:05d}.tar", "w") as t:
            for i, img in enumerate(unique_jpegs(base, samples, s * samples)):
                key = f"{s:05d}{i:04d}"
                (fd / f"{key}.jpg").write_bytes(img)
                for ext, data in (("jpg", img), ("txt", f"caption {key}".encode()),
                                  ("json", json.dumps({"key": key, "w": 64}).encode())):
                    ti = tarfile.TarInfo(f"{key}.{ext}")
                    ti.size = len(data)
                    t.addfile(ti, io.BytesIO(data))
    return sd, fd


def child(ref: str, store_dir: str) -> None:
    """Stage ``ref`` into a fresh store; print {items, errors, seconds} as JSON."""
    from orchestrator.submit import stage_items
    from orchestrator.inputs import iter_inputs
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    store = open_store(Path(store_dir).as_uri())
    fp = PipelineSpec(ocr="none", captioners=["blip"], generator="none"
                      ).resolved("tiny-random").fingerprint()
    t = time.perf_counter()
    n = errors = 0
    for it in stage_items(iter_inputs([ref]), store, fp):
        if it is None:
            continue
        n += 1
        errors += bool(it.error)
    print(json.dumps({"items": n, "errors": errors, "seconds": time.perf_counter() - t}))


def stage_once(ref: str, store_dir: Path) -> dict:
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen([sys.executable, __file__, "--child", ref, str(store_dir)],
                                cwd=C.REPO, stdout=out, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "PYTHONPATH": str(C.REPO)})
        _, status, usage = os.wait4(proc.pid, 0)
        out.seek(0)
        text = out.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"staging {ref} failed: {proc.stderr.read()[-3000:]}")
    r = json.loads(text.strip().splitlines()[-1])
    return {"items": r["items"], "errors": r["errors"], "seconds": round(r["seconds"], 2),
            "items_per_s": round(r["items"] / r["seconds"]),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def main(quick: bool = False) -> dict:
    shards, samples = QUICK if quick else (SHARDS, SAMPLES)
    tmp = C.tmpdir("itx-bench-staging-")
    try:
        t = time.perf_counter()
        sd, fd = write_data(tmp, shards, samples)
        made = time.perf_counter() - t
        res: dict = {"shards": shards, "samples_per_shard": samples, "items": shards * samples,
                     "data_seconds": round(made, 1)}
        res["from_shards"] = stage_once(str(sd / f"{{00000..{shards - 1:05d}}}.tar"),
                                        tmp / "store-shards")
        res["from_folder"] = stage_once(str(fd), tmp / "store-folder")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    res["items_per_s"] = res["from_shards"]["items_per_s"]
    res["peak_rss_mb"] = res["from_shards"]["peak_rss_mb"]
    res["targets"] = {"items_per_s": C.target(res["items_per_s"], ">=", TARGET_RATE),
                      "peak_rss_mb": C.target(res["peak_rss_mb"], "<=", TARGET_RSS)}
    rows = []
    for name in ("from_shards", "from_folder"):
        x = res[name]
        main_run = name == "from_shards"
        rows += [[f"{name.replace('_', ' ')}: items/s", x["items_per_s"],
                  f">= {TARGET_RATE:,} {C.verdict(res['targets']['items_per_s'])}"
                  if main_run else "(reported)"],
                 ["  seconds", x["seconds"], ""],
                 ["  peak RSS (MB)", x["peak_rss_mb"],
                  f"<= {TARGET_RSS} {C.verdict(res['targets']['peak_rss_mb'])}"
                  if main_run else "(reported)"],
                 ["  items (errors)", f"{x['items']} ({x['errors']})", ""]]
    C.table(f"staging: {shards} shards x {samples} samples into a file:// store",
            ["figure", "value", "target"], rows)
    C.write("staging", res)
    return res


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3])
    else:
        C.cli(main)
