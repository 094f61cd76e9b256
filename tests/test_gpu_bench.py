"""The GPU fast paths and benchmark, on CPU: fused QKV projections and the captioners' static
KV cache change no output; ``benchmarks/gpu.py --smoke`` (the per-model figures with every
new flag, and ``--pipeline``) runs end to end and writes every figure it promises."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def fresh(stage: str, name: str, **settings):
    """A backend loaded now under ``settings`` (not the model cache's: its key has no
    settings in it)."""
    import torch

    from workers.models.loader import resolve_model
    from workers.settings import use_settings
    from workers.stages import table

    decl = table.get(stage, name)
    with use_settings(**settings):
        b = decl.load_class()()
        b.ref, b.batch_size, b.decl = decl.ref("tiny-random"), decl.batch, decl
        b.load(resolve_model(b.ref), "cpu", torch.float32)
    return b


def test_fused_qkv_projections_give_the_same_images():
    from workers.settings import use_settings
    from workers.stages.generate import item_seeds

    plain = fresh("generate", "sd", generate_fuse_qkv="off")
    fused = fresh("generate", "sd", generate_fuse_qkv="on")
    # fused for real: one q/k/v projection in the UNet's and the VAE's attention
    for net in (fused.pipe.unet, fused.pipe.vae):
        assert any(hasattr(m, "to_qkv") for m in net.modules()), type(net).__name__
    assert not any(hasattr(m, "to_qkv") for m in plain.pipe.unet.modules())
    # "auto" on CPU leaves the pipeline as it is (outputs on CPU never change by default)
    with use_settings(generate_fuse_qkv="auto"):
        from workers.stages.generate.diffusion import fuse_qkv

        assert fuse_qkv(plain.pipe, "cpu") == []

    prompts = ["a red cat on a street", "a blue sky over a tree", "a dog"]
    seeds = item_seeds(7, range(len(prompts)))
    kw = {"width": 64, "height": 64, "steps": 3}
    a = plain.run(prompts, None, seeds, **kw)
    b = fused.run(prompts, None, seeds, **kw)
    for x, y in zip(a, b, strict=True):
        d = np.abs(np.asarray(x[0], dtype=int) - np.asarray(y[0], dtype=int))
        assert d.max() <= 1, d.max()  # 8-bit rounding of float noise at most
    # and before rounding to 8 bits: float tolerance
    import torch

    def latents(backend):
        g = [torch.Generator("cpu").manual_seed(s) for s in seeds]
        return backend.pipe(prompt=prompts, generator=g, output_type="np",
                            num_inference_steps=3, width=64, height=64).images

    np.testing.assert_allclose(latents(plain), latents(fused), atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["blip", "vit-gpt2", "git"])
def test_static_kv_cache_gives_the_same_captions(name, photos):
    from workers.settings import use_settings

    b = fresh("caption", name)
    want = b.run(photos, batch_size=3)  # mini-batches of 3 and 1: two cache shapes
    with use_settings(caption_static_cache=True):
        kw = b._cache_kwargs(b._inputs(photos[:1]), {"max_new_tokens": b.max_new_tokens})
        got = b.run(photos, batch_size=3)
    assert got == want
    if name == "git":  # no static cache for GIT: it is left as it is
        assert kw == {}
    else:
        assert kw["disable_compile"] is True and len(kw) == 2, kw


def bench(tmp_path, *args: str, timeout: int = 120) -> dict:
    """``benchmarks/gpu.py --smoke ARGS`` in a process of its own; its JSON."""
    out = tmp_path / "gpu.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ITX_DEVICE": "cpu", "PYTHONPATH": str(REPO)}
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke", *args,
                        "--tmp", str(tmp_path / "ckpt"), "--out", str(out)],
                       check=False, capture_output=True, text=True, timeout=timeout, env=env,
                       cwd=REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return json.loads(out.read_text())


def test_gpu_benchmark_writes_every_variant(tmp_path):
    res = bench(tmp_path, "--only", "blip,sd,sdxl,flux-schnell", "--no-loop",
                "--batch-sizes", "1,2", "--caption-batch-sizes", "2,4",
                "--sd-fast", "fuse,channels-last,fuse+compile-vae+cudagraphs",
                "--blip-static-cache", "--blip-compile")
    blip, sd = res["models"]["blip"], res["models"]["sd"]
    assert "error" not in blip and "error" not in sd, (blip, sd)
    assert set(blip["batch_sizes"]) == {"2", "4", str(blip["mini_batch"])}
    assert all(v > 0 for v in blip["batch_sizes"].values())
    for v in ("static-cache", "compile"):
        assert blip["fast"][v]["items_per_s"] > 0, blip["fast"]
    assert set(sd["batch_sizes"]) == {"1", "2", str(sd["mini_batch"])}
    fast = sd["fast"]
    assert fast["batch_size"] == int(max(sd["batch_sizes"], key=sd["batch_sizes"].get))
    for v in ("fuse", "channels-last", "fuse+compile-vae+cudagraphs"):
        assert fast[v]["items_per_s"] > 0 and fast[v]["speedup"] > 0, fast[v]
    assert fast["fuse+compile-vae+cudagraphs"]["settings"] == {
        "generate_fuse_qkv": "on", "generate_compile": "all",
        "generate_compile_mode": "reduce-overhead"}
    assert "batch1_it_per_s" in fast["fuse"]  # not compiled: batch 1 measured too
    assert sd["best_items_per_s"] >= max(sd["batch_sizes"].values())
    assert "31.19 it/s" in sd["published"]
    for name in ("sdxl", "flux-schnell"):
        r = res["models"][name]
        assert "error" not in r, r
        assert r["batched_items_per_s"] > 0 and r["half_batch1_it_per_s"] > 0
        assert r["image_it_per_s"] > 0 and "loop_items_per_s" not in r  # --no-loop
    assert res["models"]["sdxl"]["guidance"] > 1  # SDXL base runs with guidance
    assert "MLPerf" in res["models"]["sdxl"]["published"]


def test_gpu_benchmark_rejects_an_unknown_variant(tmp_path):
    p = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py"), "--smoke",
                        "--only", "sd", "--sd-fast", "fuse+turbo", "--out",
                        str(tmp_path / "x.json")], check=False, capture_output=True, text=True,
                       timeout=60,
                       cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode != 0 and "'turbo' is not one of" in p.stderr
    assert not (tmp_path / "x.json").exists()


def test_gpu_pipeline_gives_every_item_a_record(tmp_path):
    res = bench(tmp_path, "--pipeline")
    r = res["pipeline"]
    assert "error" not in r, r
    n = r["items"]
    assert n == r["records"] and r["failed"] == 0
    for k in ("with_outputs", "with_captions", "with_answers", "with_ocr"):
        assert r[k] == n, (k, r)
    assert r["items_per_s"] > 0 and 0 < r["model_busy_pct"] <= 100
    assert set(r["stage_ms_per_item"]) == set(r["stages"])
    assert r["gpu_busy_pct"] is None  # no GPU here: not made up
