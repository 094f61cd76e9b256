"""docs/adding-a-model.md stays true: its example module, exactly as the page shows it, is a
captioner that runs through `itx run` and through a real worker, and its batched captions
equal the model card's one-image-per-call use of the same checkpoint."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.cluster import BIN, REPO, redis_server, worker_env, workers

DOC = REPO / "docs" / "adding-a-model.md"


def example_module() -> str:
    return re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)[0]


@pytest.fixture(scope="module")
def plugin(tmp_path_factory, model_dir):
    root = tmp_path_factory.mktemp("plugin")
    (root / "my_models").mkdir()
    (root / "my_models" / "__init__.py").write_text("")
    (root / "my_models" / "my_blip.py").write_text(example_module())
    env = {"PYTHONPATH": str(root), "ITX_PLUGINS": "my_models.my_blip",
           "ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": str(model_dir), "ITX_DEVICE": "cpu",
           "HF_HUB_OFFLINE": "1"}
    return env


def itx(env, *args, timeout=600):
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True,
                          env=worker_env(env), cwd=REPO, timeout=timeout)


def test_the_example_is_one_short_module():
    code = example_module()
    assert len(code.strip().splitlines()) <= 60
    assert "import torch" not in code.split("class ")[0], "torch at the top of a plugin"


def reference_captions(model_dir: Path, images: list[Path]) -> list[str]:
    """BLIP's model card, one image per call, on the same tiny checkpoint."""
    import torch
    from PIL import Image
    from transformers import BlipForConditionalGeneration, BlipProcessor

    ref = model_dir / "tiny-random" / "my-blip"
    processor = BlipProcessor.from_pretrained(ref)
    model = BlipForConditionalGeneration.from_pretrained(ref).eval()
    out = []
    for p in images:
        inputs = processor(Image.open(p).convert("RGB"), return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=20)
        out.append(processor.decode(ids[0], skip_special_tokens=True).strip())
    return out


def test_the_example_runs_embedded_and_equals_the_model_card(plugin, tmp_path, model_dir):
    r = itx(plugin, "run", str(REPO / "examples/images"), "--out", str(tmp_path / "o"),
            "--captioners", "my-blip,blip", "--ocr", "none", "--generator", "none")
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(line) for line in (tmp_path / "o" / "manifest.jsonl").open()]
    assert len(recs) == 5
    for rec in recs:
        assert rec["models"]["caption:my-blip"] == "tiny-random/my-blip"
        assert rec["captions"]["my-blip"] and rec["captions"]["blip"]
    sources = [REPO / rec["source"] for rec in recs]
    assert [rec["captions"]["my-blip"] for rec in recs] == reference_captions(model_dir, sources)
    listed = itx(plugin, "models", "list", "--profile", "tiny-random")
    assert "caption:my-blip" in listed.stdout


def test_the_example_runs_on_a_real_worker(plugin, tmp_path):
    with redis_server() as redis:
        env = {**plugin, "ITX_BROKER_URL": redis.url + "/0",
               "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": (tmp_path / "store").as_uri()}
        with workers(env, light=1, heavy=0, tag="plugin"):
            r = itx(env, "submit", str(REPO / "examples/images/chelsea.jpg"), "--batch", "p1",
                    "--captioners", "my-blip", "--ocr", "none", "--generator", "none", "--wait")
            assert r.returncode == 0, r.stdout + r.stderr[-3000:]
        recs = list((tmp_path / "store" / "runs" / "p1" / "results").glob("*.json"))
        assert len(recs) == 1
        rec = json.loads(recs[0].read_text())
        assert rec["error"] is None and rec["captions"]["my-blip"]


def test_an_unknown_backend_is_refused_with_the_choices(plugin, tmp_path):
    r = itx(plugin, "run", str(REPO / "examples/images"), "--out", str(tmp_path / "o"),
            "--captioners", "my-blipp")
    assert r.returncode == 2
    assert "unknown captioner 'my-blipp'" in r.stderr and "my-blip" in r.stderr
