"""`itx run` end to end, as a user runs it: a subprocess over a folder of good and bad files."""
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.corpus import write_corpus

REPO = Path(__file__).resolve().parents[1]
_BIN = Path(sys.executable).parent / "itx"
ITX = [str(_BIN)] if _BIN.exists() else [sys.executable, "-m", "orchestrator.cli"]


def itx(*args, env=None, timeout=600, cwd=None):
    e = {**os.environ, **(env or {})}
    return subprocess.run([*ITX, *args], capture_output=True, text=True, env=e, timeout=timeout,
                          cwd=cwd or REPO)


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    d = tmp_path_factory.mktemp("mixed")
    corpus = write_corpus(d / "corpus")
    folder = d / "in"
    (folder / "sub").mkdir(parents=True)
    keep = {"photo.jpg": "ok", "gray.png": "ok", "cmyk.jpg": "ok", "animated.gif": "ok",
            "empty.jpg": "empty_file", "not-an-image.png": "not_an_image",
            "truncated.jpg": "truncated_image", "bomb.png": "too_many_pixels"}
    for name in keep:
        shutil.copy(corpus[name][0], folder / ("sub" if name.startswith("g") else "") / name)
    shutil.copy(REPO / "examples/images/sign.png", folder / "sign.png")
    keep["sign.png"] = "ok"
    (folder / "notes.txt").write_text("not an input: wrong extension in a folder is skipped")
    return folder, keep


@pytest.fixture(scope="module")
def run_result(mixed, tmp_path_factory):
    folder, _ = mixed
    out = tmp_path_factory.mktemp("out")
    t0 = time.time()
    r = itx("run", str(folder), str(folder / "missing.jpg"), "--out", str(out),
            "--profile", "tiny-random", "--vqa", "what is in the picture?", "--vqa", "is it day?",
            "--edit", "template:{caption} with {ocr}", "--edit", "style:watercolor",
            "--size", "64x48", "--n", "2", "--chunk", "4")
    return r, out, time.time() - t0


def test_run_exit_code_and_summary(run_result):
    r, out, _ = run_result
    assert r.returncode == 1, r.stderr[-3000:]
    assert "10 items, 5 ok, 5 failed" in r.stdout, r.stdout + r.stderr[-2000:]
    assert "Traceback" not in r.stderr


def test_one_record_per_input_errors_only_on_bad(run_result, mixed):
    _, out, _ = run_result
    folder, expected = mixed
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert len(records) == 10
    by_name = {Path(r["source"]).name: r for r in records}
    assert len({r["id"] for r in records}) == 10
    assert by_name["missing.jpg"]["error"].startswith("not_found:")
    for name, kind in expected.items():
        rec = by_name[name]
        if kind == "ok":
            assert rec["error"] is None, (name, rec["error"])
        else:
            assert rec["error"] and rec["error"].startswith(kind + ":"), (name, rec["error"])
            assert rec["outputs"] == []


def test_good_records_are_complete(run_result):
    _, out, _ = run_result
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    good = [r for r in records if not r["error"]]
    assert len(good) == 5
    for r in good:
        assert set(r["captions"]) == {"blip", "git", "vit-gpt2"}
        assert all(isinstance(c, str) for c in r["captions"].values())
        assert set(r["vqa"]) == {"what is in the picture?", "is it day?"}
        assert r["prompt"].endswith("watercolor painting, soft washes of colour, paper texture")
        assert r["models"]["caption:blip"] == "tiny-random/blip"
        assert r["timings_ms"]["generate:sd"] > 0
        assert len(r["outputs"]) == 2
        for uri in r["outputs"]:
            assert uri.startswith("file://")
            p = Path(uri[len("file://"):])
            assert p.is_file() and p.is_relative_to(out)
            assert Image.open(p).size == (64, 48)
        assert Path(r["image"][len("file://"):]).is_relative_to(out / "inputs")


def test_ocr_is_real_and_reaches_the_prompt(run_result):
    _, out, _ = run_result
    records = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    sign = next(r for r in records if r["source"].endswith("sign.png"))
    assert "OPEN 24 HOURS" in sign["ocr"]["text"]
    assert "OPEN 24 HOURS" in sign["prompt"]
    line = sign["ocr"]["lines"][0]
    assert len(line["box"]) == 4 and 0 <= line["conf"] <= 1


def test_rerun_recomputes_nothing(run_result, mixed):
    """Same inputs, same spec, same --out: every record is found in the store."""
    folder, _ = mixed
    _, out, first = run_result
    before = {p: p.stat().st_mtime_ns for p in (out / "runs/run/results").iterdir()}
    r = itx("run", str(folder), str(folder / "missing.jpg"), "--out", str(out),
            "--profile", "tiny-random", "--vqa", "what is in the picture?", "--vqa", "is it day?",
            "--edit", "template:{caption} with {ocr}", "--edit", "style:watercolor",
            "--size", "64x48", "--n", "2", "--chunk", "4")
    assert r.returncode == 1
    after = {p: p.stat().st_mtime_ns for p in (out / "runs/run/results").iterdir()}
    assert after == before


def test_usage_errors_exit_2_before_any_work(tmp_path):
    for args, msg in [
        (["--edit", "template:{nope}"], "unknown placeholder {nope}"),
        (["--edit", "style:vaporwave"], "unknown style"),
        (["--edit", "regex:/(/x/"], "missing )"),
        (["--size", "100x100"], "multiples of 8"),
        (["--generator", "dalle"], "unknown generator"),
        (["--ocr", "abbyy"], "unknown OCR engine"),
        (["--n", "99"], "over the limit"),
    ]:
        r = itx("run", str(REPO / "examples/images"), "--out", str(tmp_path / "o"),
                "--profile", "tiny-random", *args, timeout=120)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert msg in r.stderr, (args, r.stderr)
        assert "Traceback" not in r.stderr
        assert not (tmp_path / "o" / "manifest.jsonl").exists()


def test_base_profile_without_weights_fails_fast_and_clearly(tmp_path):
    t0 = time.time()
    r = itx("run", str(REPO / "examples/images"), "--out", str(tmp_path / "o"), "--profile", "base",
            env={"ITX_MODEL_DIR": str(tmp_path / "empty"), "HF_HUB_OFFLINE": "1",
                 "HF_HOME": str(tmp_path / "hf")}, timeout=120)
    took = time.time() - t0
    assert r.returncode == 2
    assert "itx models pull" in r.stderr and "is not on this machine" in r.stderr
    assert "Traceback" not in r.stderr
    assert took < 30, took


def test_importing_orchestrator_loads_no_ml_library():
    code = ("import sys, orchestrator, orchestrator.cli, orchestrator.batch, orchestrator.workflow, "
            "orchestrator.inputs, workers.app, workers.tasks, workers.storage, workers.settings; "
            "bad = [m for m in ('torch', 'transformers', 'diffusers', 'easyocr', 'rapidocr', "
            "'onnxruntime') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stdout + r.stderr
