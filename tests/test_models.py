"""Profiles, registry, loader, cache and the tiny-random builder, through the real code paths."""
import subprocess
import sys
import time
from pathlib import Path

import pytest

from workers.models import tiny
from workers.models.cache import load_backend
from workers.models.device import resolve_device, resolve_dtype
from workers.models.errors import ModelMissingError
from workers.models.loader import resolve_model
from workers.models.profiles import PROFILES, model_ref, models
from workers.stages import table

REPO = Path(__file__).resolve().parents[1]


def test_profiles_name_every_stage_backend():
    for name in PROFILES:
        for key in ("ocr:easyocr", "ocr:rapidocr", "ocr:tesseract", "caption:blip", "caption:git",
                    "caption:vit-gpt2", "vqa:blip-vqa", "generate:sd", "generate:sd-img2img",
                    "generate:if"):
            assert key in models(name), (name, key)
    assert all(ref.startswith("tiny-random/") or ref == "builtin"
               for ref in models("tiny-random").values())
    assert model_ref("caption", "blip", "base") == "Salesforce/blip-image-captioning-base"
    assert model_ref("caption", "org/other-model", "base") == "org/other-model"


def test_stage_table():
    def names(stage):  # itx's own (other tests may have imported plugin backends)
        return [d.name for d in table.decls(stage) if table.builtin(d)]

    assert names("caption") == ["blip", "git", "vit-gpt2", "florence-2", "smolvlm",
                                      "qwen2.5-vl", "blip2"]
    assert names("generate")[:3] == ["sd", "sd-img2img", "if"]
    assert {"if-ii", "if-iii", "sd-turbo", "sdxl-turbo-img2img", "flux-schnell"} <= \
        set(names("generate"))
    assert set(names("ocr")) == {"easyocr", "rapidocr", "tesseract", "florence-2"}
    assert set(names("vqa")) == {"blip-vqa", "smolvlm", "qwen2.5-vl", "blip2"}
    hf = table.get("caption", "some/hf-model")
    assert hf.load_class() is table.get("caption", "blip").load_class()
    assert hf.ref("base") == "some/hf-model"
    with pytest.raises(ValueError, match="unknown generator 'dalle'"):
        table.get("generate", "dalle")
    with pytest.raises(ValueError, match="unknown stage"):
        table.get("translate", "x")
    assert table.queue_of("caption", "blip") == "light"
    assert table.queue_of("generate", "sd") == "heavy"
    assert table.get("generate", "sd-img2img").consumes == ("prompt", "image")


def test_routes_are_overridable(monkeypatch):
    from workers.settings import reset_settings

    monkeypatch.setenv("ITX_ROUTES", "caption:git=heavy")
    reset_settings()
    try:
        assert table.queue_of("caption", "git") == "heavy"
        assert table.queue_of("caption", "blip") == "light"
        monkeypatch.setenv("ITX_ROUTES", "ocr=ocr, caption:git=heavy")  # a whole stage
        reset_settings()
        assert {table.queue_of("ocr", n) for n in table.names("ocr")} == {"ocr"}
        assert table.routes()["caption:git"] == "heavy"
        from workers.app import queues
        from workers.settings import get_settings

        assert queues(get_settings()) == ["light", "heavy", "ocr"]
        for bad in ("caption:git=gpu", "captions=light", "caption:git"):  # typos: no hang
            monkeypatch.setenv("ITX_ROUTES", bad)
            reset_settings()
            with pytest.raises(ValueError, match="STAGE:BACKEND=QUEUE"):
                table.queue_of("caption", "git")
    finally:
        monkeypatch.delenv("ITX_ROUTES")
        reset_settings()


def test_device_and_dtype_are_automatic_and_overridable():
    import torch

    assert resolve_device("auto") in ("cpu", "cuda")
    assert resolve_dtype("cpu") == torch.float32
    assert resolve_dtype("cuda") == torch.float16
    assert resolve_dtype("cpu", "bfloat16") == torch.bfloat16
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            resolve_device("cuda")


def test_cache_loads_each_model_once(model_dir):
    a = load_backend("caption", "git")
    b = load_backend("caption", "git")
    assert a is b
    c = load_backend("caption", "git", dtype="bfloat16")
    assert c is not a  # another dtype is another model
    sd = load_backend("generate", "sd")
    i2i = load_backend("generate", "sd-img2img")
    assert i2i.pipe.unet is sd.pipe.unet  # img2img shares txt2img's loaded components


def test_tiny_builds_on_first_use_deterministically(tmp_path):
    p = Path(resolve_model("tiny-random/git", tmp_path))
    assert p == tmp_path / "tiny-random" / "git" and (p / tiny.DONE).exists()
    files = {f.relative_to(p): f.read_bytes() for f in p.rglob("*") if f.is_file()}
    again = tiny.build("git", tmp_path / "second")
    files2 = {f.relative_to(again): f.read_bytes() for f in again.rglob("*") if f.is_file()}
    assert files == files2


def test_missing_weights_fail_fast_with_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    t0 = time.time()
    with pytest.raises(ModelMissingError) as e:
        resolve_model("Salesforce/blip-image-captioning-base", tmp_path)
    assert time.time() - t0 < 5
    assert "Salesforce/blip-image-captioning-base" in str(e.value)
    assert "itx models pull" in str(e.value)
    with pytest.raises(ModelMissingError, match="easyocr/en"):
        resolve_model("easyocr/en", tmp_path)
    pulled = tmp_path / "Salesforce" / "blip-image-captioning-base"
    pulled.mkdir(parents=True)
    assert resolve_model("Salesforce/blip-image-captioning-base", tmp_path) == str(pulled)


def test_models_tiny_and_list_cli(tmp_path):
    itx = Path(sys.executable).parent / "itx"
    env = {"ITX_MODEL_DIR": str(tmp_path), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([str(itx), "models", "tiny"], capture_output=True, text=True, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    built = sorted(p.name for p in (tmp_path / "tiny-random").iterdir() if not p.name.startswith("."))
    assert built == tiny.names()  # one checkpoint per tiny builder the stage table names
    total = sum(f.stat().st_size for f in (tmp_path / "tiny-random").rglob("*") if f.is_file())
    assert total < 20e6, total  # a few MB in all
    r = subprocess.run([str(itx), "models", "list", "--profile", "tiny-random"], capture_output=True,
                       text=True, env={**env, "COLUMNS": "200"}, timeout=60)
    assert r.returncode == 0 and "tiny-random/blip" in r.stdout and "yes" in r.stdout


def test_readme_model_table_is_the_stage_table():
    readme = (REPO / "README.md").read_text()
    block = readme.split("<!-- models:begin -->\n", 1)[1].split("\n<!-- models:end -->", 1)[0]
    assert block == table.markdown(plugins=False), \
        "run `itx models table` and paste it into the README"
    for d in filter(table.builtin, table.decls()):
        assert f"`{d.name}`" in block


def test_record_schema_in_docs_is_current():
    import json

    from workers.records import ResultRecord, record_schema

    assert json.loads((REPO / "docs" / "record.schema.json").read_text()) == record_schema(), \
        "run `python -m workers.records > docs/record.schema.json`"
    # a record of the previous version (no new optional fields) is still valid
    old = {"id": "x", "source": "a.jpg", "image": "file:///s/inputs/a.jpg", "ocr": None,
           "captions": {"blip": "a cat"}, "vqa": {}, "prompt": "a cat", "outputs": [],
           "models": {}, "timings_ms": {}, "error": None}
    assert ResultRecord.model_validate(old).captions == {"blip": "a cat"}
