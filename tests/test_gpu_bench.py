"""The GPU fast paths and benchmark, on CPU: fused QKV projections and the captioners' static
KV cache change no output; ``benchmarks/gpu.py --smoke`` (the per-model figures with every
new flag, and ``--pipeline``) runs end to end and writes every figure it promises."""
from __future__ import annotations

import numpy as np
import pytest

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
