"""Issue 12's models for ``benchmarks/gpu.py``: Florence-2, SmolVLM, Qwen2.5-VL, SD-Turbo,
SDXL-Turbo and FLUX.1 [schnell], and SDXL base's architecture at 1024 px 30 steps (issue 15),
at full size with random weights (the IF cascade's stages II
and III are not here yet).

Each checkpoint starts as the tiny-random one (``workers/models/tiny``: processor, tokenizer,
scheduler, chat template), then its networks are replaced by full-size ones built from the
real architectures' hub configs (the widths and depths below) and saved over it, so the
backend loads it through its own ``load`` (``from_pretrained``). ``--smoke`` keeps the tiny
networks (any device, code path only). Measured like gpu.py: the model card's fp32
one-input-per-call loop against itx's batched half-precision backend, on the same checkpoint.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import gpu  # benchmarks/gpu.py: photos, timed, free, NEW_TOKENS, PROMPT


def _kw(**kw) -> dict:
    """Keyword arguments as a dict (the configs below read like the constructors' calls)."""
    return kw


CLIP_L = _kw(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
             num_attention_heads=12, projection_dim=768, vocab_size=49408, hidden_act="quick_gelu")
CLIP_H = _kw(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
             num_attention_heads=16, projection_dim=1024, vocab_size=49408, hidden_act="gelu")
CLIP_G = _kw(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32,
             num_attention_heads=20, projection_dim=1280, vocab_size=49408, hidden_act="gelu")
T5_XXL = _kw(d_model=4096, d_kv=64, d_ff=10240, num_layers=24, num_heads=64, vocab_size=32128,
             relative_attention_num_buckets=32, feed_forward_proj="gated-gelu")
VAE = _kw(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32,
          down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
SDXL_UNET = _kw(sample_size=128, block_out_channels=(320, 640, 1280), layers_per_block=2,
                transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20),
                cross_attention_dim=2048, addition_embed_type="text_time",
                addition_time_embed_dim=256, projection_class_embeddings_input_dim=2816,
                use_linear_projection=True, norm_num_groups=32,
                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
                up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"))
SD21_UNET = _kw(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                use_linear_projection=True, norm_num_groups=32,
                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
# VLMs: text / vision overrides of the tiny configs, and the processor at the real resolution
VLM = {
    "florence-2": (_kw(d_model=768, encoder_layers=6, decoder_layers=6, encoder_attention_heads=12,
                       decoder_attention_heads=12, encoder_ffn_dim=3072, decoder_ffn_dim=3072,
                       max_position_embeddings=1024, vocab_size=51289),
                   _kw(depths=(1, 1, 9, 1), patch_size=(7, 3, 3, 3), patch_stride=(4, 2, 2, 2),
                       patch_padding=(3, 1, 1, 1), patch_prenorm=(False, True, True, True),
                       embed_dim=(128, 256, 512, 1024), num_heads=(4, 8, 16, 32),
                       num_groups=(4, 8, 16, 32), window_size=12, projection_dim=768,
                       max_position_embeddings=50)),
    "smolvlm": (_kw(hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                    num_attention_heads=9, num_key_value_heads=3, vocab_size=49280),
                _kw(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                    num_attention_heads=12, image_size=512, patch_size=16)),
    "qwen2.5-vl": (_kw(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                       num_attention_heads=16, num_key_value_heads=2, vocab_size=151936,
                       rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                        "rope_theta": 1e6}),
                   _kw(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16,
                       out_hidden_size=2048, window_size=112,
                       fullatt_block_indexes=[7, 15, 23, 31])),
}
# name: (backend whose checkpoint layout it takes, size, steps, guidance). "sdxl" is SDXL base's
# architecture (the same UNet as SDXL-Turbo) at 1024 px, 30 steps, with guidance (2 UNet rows
# per image), the figure issue 15 asks for beside MLPerf's
GEN = {"sd-turbo": ("sd-turbo", 512, 1, 0.0), "sdxl-turbo": ("sdxl-turbo", 512, 1, 0.0),
       "sdxl": ("sdxl-turbo", 1024, 30, 5.0), "flux-schnell": ("flux-schnell", 1024, 4, 0.0)}


def _ids(tok) -> dict:
    return {k: getattr(tok, k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")
            if getattr(tok, k, None) is not None}


def _full_vlm(name: str, path: Path, device: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoProcessor

    text, vision = VLM[name]
    cfg = AutoConfig.from_pretrained(path)
    for k, v in text.items():
        setattr(cfg.text_config, k, v)
    for k, v in vision.items():
        setattr(cfg.vision_config, k, v)
    if name == "smolvlm":
        cfg.scale_factor = 4
    proc = AutoProcessor.from_pretrained(path)
    ip = proc.image_processor
    if name == "florence-2":  # 768 px: (768 / 32)^2 patches + 1 pooled token
        ip.size, ip.crop_size, ip.image_seq_length = ({"height": 768, "width": 768},) * 2 + (577,)
    elif name == "smolvlm":  # 512 px tiles: (512 / 16)^2 / 4^2 tokens each
        ip.size, ip.max_image_size, proc.image_seq_len = {"longest_edge": 2048}, \
            {"longest_edge": 512}, 64
    else:
        ip.size = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 1280}
    with torch.device(device):
        model = AutoModelForImageTextToText.from_config(cfg)
    model.to(torch.float16).save_pretrained(path)
    proc.save_pretrained(path)


def _full_pipe(name: str, path: Path, device: str) -> None:
    name = GEN[name][0]
    import diffusers
    import torch
    import transformers

    def put(sub: str, cls, cfg) -> None:
        with torch.device(device):
            m = cls(cfg) if isinstance(cfg, transformers.PretrainedConfig) else cls(**cfg)
        m.to(torch.float16).save_pretrained(path / sub)

    tok = transformers.AutoTokenizer.from_pretrained(path / "tokenizer")
    clip = lambda kw: transformers.CLIPTextConfig(max_position_embeddings=77, **kw,
                                                  **_ids(tok))
    if name == "flux-schnell":
        t5 = transformers.AutoTokenizer.from_pretrained(path / "tokenizer_2")
        put("transformer", diffusers.FluxTransformer2DModel, {})  # the defaults are FLUX.1's
        put("text_encoder", transformers.CLIPTextModel, clip(CLIP_L))
        put("text_encoder_2", transformers.T5EncoderModel, transformers.T5Config(
            **T5_XXL, pad_token_id=t5.pad_token_id, eos_token_id=t5.eos_token_id))
        put("vae", diffusers.AutoencoderKL, dict(**VAE, latent_channels=16, use_quant_conv=False,
                                                 use_post_quant_conv=False,
                                                 scaling_factor=0.3611, shift_factor=0.1159))
    elif name == "sdxl-turbo":
        put("unet", diffusers.UNet2DConditionModel, SDXL_UNET)
        put("text_encoder", transformers.CLIPTextModel, clip(CLIP_L))
        put("text_encoder_2", transformers.CLIPTextModelWithProjection, clip(CLIP_G))
        put("vae", diffusers.AutoencoderKL, dict(**VAE, latent_channels=4))
    elif name == "sd-turbo":
        put("unet", diffusers.UNet2DConditionModel, SD21_UNET)
        put("text_encoder", transformers.CLIPTextModel, clip(CLIP_H))
        put("vae", diffusers.AutoencoderKL, dict(**VAE, latent_channels=4))


def bench_new(name: str, a, device: str, half, root: Path) -> dict:
    import torch

    from workers.models.cache import load_backend  # noqa: F401  (the stage table, plugins)
    from workers.models.tiny import build
    from workers.stages import table

    t = time.perf_counter()
    stage, backend = ("generate", GEN[name][0]) if name in GEN else ("caption", name)
    path = build(table.get(stage, backend).refs["tiny-random"].split("/", 1)[1], root / name)
    if not a.smoke:
        (_full_vlm if stage == "caption" else _full_pipe)(name, path, device)
    build_s = time.perf_counter() - t
    decl = table.get(stage, backend)

    def load(dtype):
        b = decl.load_class()()
        b.ref, b.batch_size = str(path), decl.batch
        b.load(str(path), device, dtype)
        if stage == "caption":  # random weights: every caption the same length
            b.max_new_tokens = b.new_tokens = gpu.NEW_TOKENS
            b.model.generation_config.min_new_tokens = gpu.NEW_TOKENS
        return b

    if stage == "caption":
        n_loop, n_batch = (2, 4) if a.smoke else (a.loop_images, a.batch_images)
        imgs = gpu.photos(max(n_loop, n_batch))
        call = lambda b, k, bs=None: b.run(imgs[:k], batch_size=bs)
        one = lambda b, j: b.run([imgs[j]], batch_size=1)
        extra = {}
    else:
        size, steps, guidance = GEN[name][1:]
        size, steps = (64, 2) if a.smoke else (size, steps)
        n_loop, n_batch = (1, 2) if a.smoke else (a.gen_loop_images, a.gen_batch_images)
        prompts = [f"{gpu.PROMPT}, number {i}" for i in range(max(n_loop, n_batch))]
        kw = {"width": size, "height": size, "steps": steps, "guidance_scale": guidance}
        call = lambda b, k, bs=None: b.run(prompts[:k], None, list(range(k)),
                                           batch_size=bs, **kw)
        one = lambda b, j: b.run([prompts[j]], None, [j], batch_size=1, **kw)
        extra = {"size": size, "steps": steps, "guidance": guidance}
    # 1. the model card: fp32, one input per call (--no-loop: skipped; FLUX in fp32 takes
    # 67 GB before activations)
    if not a.no_loop:
        b = load(torch.float32)
        one(b, 0)
        loop_s = gpu.timed(lambda: [one(b, j) for j in range(n_loop)])
        extra.update(loop_items_per_s=round(n_loop / loop_s, 3), loop_images=n_loop)
        b = None
        gpu.free()
    # 2. itx: half precision, the backend's mini-batches (generators: batch 1 first)
    b = load(half)
    if stage == "generate":
        one(b, 0)
        one_s = gpu.timed(lambda: one(b, 0))
        extra.update(half_batch1_s_per_image=round(one_s, 3),
                     half_batch1_it_per_s=round(steps / one_s, 2))
    call(b, min(n_batch, b.max_batch))
    batch_s = gpu.timed(lambda: call(b, n_batch))
    params = sum(p.numel() for m in ([b.model] if stage == "caption" else
                                     [c for c in b.pipe.components.values()
                                      if isinstance(c, torch.nn.Module)])
                 for p in m.parameters()) / 1e6
    out = {"params_m": round(params, 1), "batched_items_per_s": round(n_batch / batch_s, 3),
           "mini_batch": b.max_batch, "dtype": str(half), "batch_images": n_batch,
           "build_s": round(build_s, 1), **extra}
    if "loop_items_per_s" in out:
        out["ratio"] = round(out["batched_items_per_s"] / out["loop_items_per_s"], 2)
    if stage == "generate":  # denoising iterations per second of one image, batched
        out["image_it_per_s"] = round(out["batched_items_per_s"] * steps, 1)
    b = None
    gpu.free()
    shutil.rmtree(root / name, ignore_errors=True)  # FLUX's checkpoint takes 34 GB of disk
    json.dumps(out)
    return out
