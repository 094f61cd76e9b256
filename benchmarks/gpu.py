"""GPU benchmark: the notebook's per-image fp32 loop against itx's batched fp16/bf16 backends,
on full-size architectures with random weights (so compute cost equals the real models').

    python benchmarks/gpu.py                 # one GPU, every model, about 5 minutes on an H100
    python benchmarks/gpu.py --compile       # also torch.compile the Stable Diffusion UNet
    python benchmarks/gpu.py --only blip,sd  # a subset
    python benchmarks/gpu.py --smoke         # tiny widths on CPU: checks the code path only

Needs only torch, transformers, diffusers and pillow: no hub, no weights, no Celery. Configs
are written here (BLIP-base, GIT-base, ViT-GPT2, BLIP-VQA-base, Stable Diffusion 1.5, an
IF-I-M-shaped DeepFloyd IF stage I with its T5-XXL text encoder), weights are random, and
the tokenizers come from the tiny-random builders (``workers/models/tiny``): token ids are
all the models need, and every caption is forced to the same length (20 new tokens) so the
random weights cannot stop early. The backends are itx's own (``workers/stages``), loaded
through their ``load`` (captioners, VQA: a checkpoint written to a temp dir, SDPA attention)
or handed a pipeline built in memory (generators: the backend's ``_finish_load``).

For each model: items/s of the per-image loop (fp32, batch 1, what the original notebook
did) and of the batched backend (fp16 on GPUs without bf16 preference; ``--dtype``), their
ratio, and for Stable Diffusion also fp16 batch-1 iterations/s, the figure published
benchmarks quote. Prints the card's name; writes ``benchmarks/out/gpu.json`` (``--out``).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODELS = ["blip", "git", "vit-gpt2", "blip-vqa", "sd", "if"]
# issue 12's models (bench_new): checkpoints written at full size with random weights
NEW_MODELS = ["florence-2", "smolvlm", "qwen2.5-vl", "sd-turbo", "sdxl-turbo", "sdxl",
              "flux-schnell"]
NEW_TOKENS = 20
PROMPT = "a photograph of a red double-decker bus on a rainy city street at night"
# what published diffusers figures use: 512x512, 25-50 steps, fp16, SDPA
SD_SIZE, SD_STEPS = 512, 25


def stage_modules():
    """Import itx's stage modules without ``workers/__init__`` (which starts the Celery app)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    if "workers" not in sys.modules:
        pkg = types.ModuleType("workers")
        pkg.__path__ = [str(REPO / "workers")]
        sys.modules["workers"] = pkg
    from workers.stages import generate
    from workers.stages.caption import image_to_text as caption
    from workers.stages.generate import deepfloyd_if, sd
    from workers.stages.vqa import blip as vqa

    generate.StableDiffusion, generate.DeepFloydIF = sd.StableDiffusion, deepfloyd_if.DeepFloydIF
    return caption, vqa, generate


# --- configs (full size; --smoke shrinks the widths, not the code path) ----------------------
def caption_parts(name: str, smoke: bool):
    """(model, processing objects to save) with random weights, full-size config."""
    import torch
    from transformers import (
        BlipConfig,
        BlipForConditionalGeneration,
        BlipForQuestionAnswering,
        BlipImageProcessor,
        BlipProcessor,
        CLIPImageProcessor,
        GitConfig,
        GitForCausalLM,
        GitProcessor,
        GPT2Config,
        VisionEncoderDecoderConfig,
        VisionEncoderDecoderModel,
        ViTConfig,
        ViTImageProcessor,
    )

    from workers.models.tiny.captioning import bert_tokenizer, gpt2_tokenizer

    small = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 2} if smoke else {}
    if name in ("blip", "blip-vqa"):
        tok = bert_tokenizer(("[DEC]", "[ENC]"), bos_token="[DEC]", extra_special_tokens=["[ENC]"])
        ids = {"bos_token_id": tok.convert_tokens_to_ids("[DEC]"), "eos_token_id": tok.sep_token_id,
               "sep_token_id": tok.sep_token_id, "pad_token_id": tok.pad_token_id}
        size = 64 if smoke else 384  # Salesforce/blip-*-base: ViT-B/16 at 384
        text = {"vocab_size": 30524, **ids, **small}
        if smoke:
            text["encoder_hidden_size"] = 64
        config = BlipConfig(text_config=text, vision_config={"image_size": size, **small})
        cls = BlipForQuestionAnswering if name == "blip-vqa" else BlipForConditionalGeneration
        image_processor = BlipImageProcessor(size={"height": size, "width": size})
        proc = BlipProcessor(image_processor=image_processor, tokenizer=tok)
        gen = ids
    elif name == "git":
        tok = bert_tokenizer()
        ids = {"bos_token_id": tok.cls_token_id, "eos_token_id": tok.sep_token_id,
               "pad_token_id": tok.pad_token_id}
        size = 64 if smoke else 224  # microsoft/git-base: CLIP ViT-B/16 at 224, 6-layer decoder
        config = GitConfig(vision_config={"image_size": size, **small}, vocab_size=30522,
                           num_hidden_layers=2 if smoke else 6, **ids,
                           **({k: v for k, v in small.items() if k != "num_hidden_layers"}))
        cls = GitForCausalLM
        proc = GitProcessor(image_processor=CLIPImageProcessor(
            size={"shortest_edge": size}, crop_size={"height": size, "width": size}), tokenizer=tok)
        gen = ids
    elif name == "vit-gpt2":
        tok = gpt2_tokenizer()
        eot = tok.eos_token_id
        ids = {"bos_token_id": eot, "eos_token_id": eot, "pad_token_id": eot,
               "decoder_start_token_id": eot}
        size = 64 if smoke else 224  # nlpconnect/vit-gpt2: ViT-B/16 at 224 + GPT-2 (124M)
        enc = ViTConfig(image_size=size, **small)
        dec = GPT2Config(add_cross_attention=True, is_decoder=True, bos_token_id=eot,
                         eos_token_id=eot, pad_token_id=eot,
                         **({"n_embd": 64, "n_layer": 2, "n_head": 2} if smoke else {}))
        config = VisionEncoderDecoderConfig.from_encoder_decoder_configs(enc, dec)
        for k, v in ids.items():
            setattr(config, k, v)
        cls = VisionEncoderDecoderModel
        proc = ViTImageProcessor(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                 image_std=[0.5] * 3)
        return cls, config, (proc, tok), ids
    else:
        raise ValueError(name)
    del torch
    return cls, config, (proc,), gen


def write_captioner(name: str, root: Path, device: str, smoke: bool,
                    min_new_tokens: int | None = None) -> tuple[Path, float]:
    """Random full-size checkpoint in ``root/name`` (fp16 on disk), as the hub lays it out;
    ``min_new_tokens`` goes in its generation config (random weights stop at random places)."""
    import torch
    from transformers import GenerationConfig

    cls, config, processing, gen = caption_parts(name, smoke)
    with torch.device(device):
        model = cls(config) if cls.__name__ != "VisionEncoderDecoderModel" else cls(config=config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    extra = {"min_new_tokens": min_new_tokens} if min_new_tokens else {}
    model.generation_config = GenerationConfig(**gen, **extra)
    out = root / name
    model.to(torch.float16 if device != "cpu" else torch.float32).save_pretrained(out)
    for p in processing:
        p.save_pretrained(out)
    del model
    return out, params


def sd_pipe(device: str, dtype, smoke: bool):
    """Stable Diffusion 1.5's architecture (UNet 860M, VAE, CLIP ViT-L/14 text encoder)."""
    import torch
    from diffusers import (
        AutoencoderKL,
        PNDMScheduler,
        StableDiffusionPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel

    from workers.models.tiny.diffusion import _clip_tokenizer

    tok = _clip_tokenizer()
    w = (32, 64, 64, 64) if smoke else (320, 640, 1280, 1280)
    with torch.device(device):
        text = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
            **({"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
                "num_attention_heads": 2} if smoke else
               {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
                "num_attention_heads": 12, "projection_dim": 768, "hidden_act": "quick_gelu"})))
        vae = AutoencoderKL(
            in_channels=3, out_channels=3, latent_channels=4, sample_size=512, layers_per_block=2,
            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
            block_out_channels=(32, 32, 64, 64) if smoke else (128, 256, 512, 512))
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=w, cross_attention_dim=64 if smoke else 768,
            attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
            up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    scheduler = PNDMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, set_alpha_to_one=False,
                              skip_prk_steps=True, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet,
                                   scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    return pipe.to(dtype=dtype), sum(p.numel() for p in unet.parameters()) / 1e6


def if_pipe(device: str, dtype, smoke: bool):
    """DeepFloyd IF stage I: an IF-I-M-shaped pixel UNet (~370M) and a T5-XXL encoder (4.7B)."""
    import torch
    from diffusers import DDPMScheduler, IFPipeline, UNet2DConditionModel
    from transformers import T5Config, T5EncoderModel

    from workers.models.tiny.diffusion import _t5_tokenizer

    tok = _t5_tokenizer()
    c = 32 if smoke else 192  # IF-I-XL is 704 (4.3B); IF-I-M's width gives ~370M parameters
    d = 64 if smoke else 4096
    with torch.device(device):
        text = T5EncoderModel(T5Config(
            vocab_size=32128, d_model=d, d_kv=64 if not smoke else 16,
            d_ff=128 if smoke else 10240, num_layers=2 if smoke else 24,
            num_heads=4 if smoke else 64, feed_forward_proj="gated-gelu",
            pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            decoder_start_token_id=tok.pad_token_id))
        unet = UNet2DConditionModel(
            sample_size=64, in_channels=3, out_channels=6, layers_per_block=3,
            block_out_channels=(c, 2 * c, 3 * c, 4 * c),
            down_block_types=("ResnetDownsampleBlock2D",) + ("SimpleCrossAttnDownBlock2D",) * 3,
            mid_block_type="UNetMidBlock2DSimpleCrossAttn",
            up_block_types=("SimpleCrossAttnUpBlock2D",) * 3 + ("ResnetUpsampleBlock2D",),
            cross_attention_dim=4 * c, encoder_hid_dim=d, encoder_hid_dim_type="text_proj",
            attention_head_dim=16 if smoke else 64, addition_embed_type="text",
            addition_embed_type_num_heads=4 if smoke else 64, cross_attention_norm="group_norm",
            resnet_time_scale_shift="scale_shift", act_fn="gelu")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2",
                              beta_start=0.0001, beta_end=0.02, thresholding=True,
                              dynamic_thresholding_ratio=0.95, sample_max_value=1.5,
                              prediction_type="epsilon", variance_type="learned_range",
                              clip_sample=True)
    pipe = IFPipeline(tokenizer=tok, text_encoder=text, unet=unet, scheduler=scheduler,
                      safety_checker=None, feature_extractor=None, watermarker=None,
                      requires_safety_checker=False)
    params = (sum(p.numel() for p in unet.parameters()) / 1e6,
              sum(p.numel() for p in text.parameters()) / 1e6)
    return pipe.to(dtype=dtype), params


# --- timing ---------------------------------------------------------------------------------
def sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def free():
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def photos(n: int):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    return [Image.fromarray(rng.integers(0, 255, (480, 640, 3), dtype=np.uint8)) for _ in range(n)]


# --- the benchmarks ---------------------------------------------------------------------------
def sizes_for(n: int, bs: int) -> int:
    """At least ``n`` items, a whole number of mini-batches of ``bs`` (one batch shape)."""
    return -(-max(n, bs) // bs) * bs


def best(sweep: dict) -> int:
    """The batch size with the most items/s in a sweep ``{bs: items/s}``."""
    return int(max(sweep, key=lambda k: sweep[k]))


def bench_captioner(name: str, a, device: str, half, root: Path) -> dict:
    import torch

    from workers.settings import use_settings

    caption, vqa, _ = stage_modules()
    t = time.perf_counter()
    path, params = write_captioner(name, root, device, a.smoke)
    build_s = time.perf_counter() - t
    cls = vqa.BlipVQA if name == "blip-vqa" else caption.ImageToText
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    n_loop, n_batch = (2, 4) if a.smoke else (a.loop_images, a.batch_images)
    sizes = a.caption_batch_sizes or []
    imgs = photos(max([n_loop, n_batch] + [sizes_for(n_batch, bs) for bs in sizes]))

    def cols(k):
        return [imgs[:k]] + ([[["what is in the picture?"]] * k] if name == "blip-vqa" else [])

    def load(dtype):
        b = cls()
        b.ref = str(path)
        b.load(str(path), device, dtype)
        return b

    def batched(b, bs):
        """items/s over whole mini-batches of ``bs``, after a warm-up at that shape."""
        c = cols(sizes_for(n_batch, bs))
        t = time.perf_counter()
        b.run(*[x[:bs] for x in c], batch_size=bs, **kw)
        warm = time.perf_counter() - t
        return round(len(c[0]) / timed(lambda: b.run(*c, batch_size=bs, **kw)), 2), warm

    out = {"params_m": round(params, 1), "new_tokens": NEW_TOKENS, "build_s": round(build_s, 1)}
    # 1. the notebook: fp32, one image per call
    if not a.no_loop:
        b32 = load(torch.float32)
        c = cols(n_loop)
        b32.run(*[x[:1] for x in c], batch_size=1, **kw)  # warm-up
        loop_s = timed(lambda: [b32.run(*[[x[j]] for x in c], batch_size=1, **kw)
                                for j in range(n_loop)])
        out.update(loop_items_per_s=round(n_loop / loop_s, 2), loop_images=n_loop)
        b32 = None
        free()
    # 2. itx: half precision, the backend's own mini-batch size for the device
    b = load(half)
    c = cols(n_batch)
    b.run(*[x[:b.max_batch] for x in c], **kw)  # warm-up at the full batch shape
    batch_s = timed(lambda: b.run(*c, **kw))
    out.update(batched_items_per_s=round(n_batch / batch_s, 2), mini_batch=b.max_batch,
               dtype=str(half), attention=b.model.config._attn_implementation,
               batch_images=n_batch)
    if "loop_items_per_s" in out:
        out["ratio"] = round((loop_s / n_loop) / (batch_s / n_batch), 2)
    # 3. other mini-batch sizes (--caption-batch-sizes), then the fast paths at the best one
    sweep = {b.max_batch: out["batched_items_per_s"]}
    for bs in sizes:
        sweep[bs] = batched(b, bs)[0]
    out["batch_sizes"] = {str(k): v for k, v in sorted(sweep.items())}
    fast_bs = best(sweep)
    variants = {"static-cache": {"caption_static_cache": True},
                "compile": {"caption_static_cache": True, "caption_compile": True}}
    wanted = [v for v, on in (("static-cache", a.caption_static_cache),
                              ("compile", a.caption_compile)) if on]
    if wanted and isinstance(b, caption.ImageToText):
        out["fast"] = {"batch_size": fast_bs, "plain_items_per_s": sweep[fast_bs]}
        for v in wanted:
            try:
                with use_settings(**variants[v]):
                    ips, warm = batched(b, fast_bs)
                out["fast"][v] = {"items_per_s": ips, "speedup": round(ips / sweep[fast_bs], 2),
                                  "warm_up_s": round(warm, 1), "settings": variants[v]}
            except Exception as e:  # noqa: BLE001 - keep the other figures
                out["fast"][v] = {"error": f"{type(e).__name__}: {e}"[:500]}
                free()
    out["best_items_per_s"] = max([*sweep.values()] + [
        f["items_per_s"] for f in out.get("fast", {}).values()
        if isinstance(f, dict) and "items_per_s" in f])
    b = None
    free()
    return out


# --sd-fast: each variant is settings of the generate backend (workers/settings.py) and, for
# the attention kernels, a torch.nn.attention.sdpa_kernel context around the runs
BASE_GEN = {"generate_fuse_qkv": "off", "generate_channels_last": "denoiser",
            "generate_compile": "off", "generate_compile_mode": "default"}  # the eager figures
FAST = {"fuse": {"generate_fuse_qkv": "on"},
        "channels-last": {"generate_channels_last": "all"},
        "compile": {"generate_compile": "denoiser"},
        "compile-vae": {"generate_compile": "all"},
        "cudagraphs": {"generate_compile_mode": "reduce-overhead"},
        "autotune": {"generate_compile_mode": "max-autotune-no-cudagraphs"},
        "cudnn-sdpa": {}, "flash-sdpa": {}}
SDPA = {"cudnn-sdpa": "CUDNN_ATTENTION", "flash-sdpa": "FLASH_ATTENTION"}


def variant(spec: str) -> tuple[dict, str | None]:
    """``fuse+compile+cudagraphs`` -> (settings, SDPA backend or None)."""
    settings, kernel = dict(BASE_GEN), None
    for part in spec.split("+"):
        if part not in FAST:
            raise ValueError(f"--sd-fast {spec!r}: {part!r} is not one of {', '.join(FAST)}")
        settings.update(FAST[part])
        kernel = SDPA.get(part, kernel)
    if settings["generate_compile_mode"] != "default" and settings["generate_compile"] == "off":
        settings["generate_compile"] = "denoiser"  # a compile mode means compiling
    return settings, kernel


def sdpa_context(kernel: str | None):
    import contextlib

    if kernel is None:
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([getattr(SDPBackend, kernel)])


def bench_generator(name: str, a, device: str, half) -> dict:
    import torch

    from workers.settings import use_settings

    _, _, generate = stage_modules()
    smoke = a.smoke
    size = 64 if smoke else (SD_SIZE if name == "sd" else 64)
    steps = 2 if smoke else a.steps
    n_loop, n_batch = (1, 2) if smoke else (a.gen_loop_images, a.gen_batch_images)
    sizes = a.batch_sizes or []
    cls = generate.StableDiffusion if name == "sd" else generate.DeepFloydIF
    make = sd_pipe if name == "sd" else if_pipe
    n_all = max([n_loop, n_batch] + [sizes_for(n_batch, bs) for bs in sizes])
    prompts = [f"{PROMPT}, number {i}" for i in range(n_all)]
    seeds = generate.item_seeds(0, range(len(prompts)))
    kw = {"width": size, "height": size, "steps": steps}

    def backend(pipe, dtype, settings):
        b = cls()
        b.device, b.dtype = device, dtype
        with use_settings(**settings):
            b.setup(pipe, device)  # what load() does after from_pretrained
        return b

    def run(b, k, bs=None):
        return b.run(prompts[:k], None, seeds[:k], batch_size=bs, **kw)

    def batched(b, bs):
        """images/s over whole mini-batches of ``bs``, after a warm-up (compiles) at that
        shape; and the warm-up's seconds."""
        k = sizes_for(n_batch, bs)
        t = time.perf_counter()
        run(b, bs, bs)
        warm = time.perf_counter() - t
        return round(k / timed(lambda: run(b, k, bs)), 3), warm

    def batch1(b):
        run(b, 1, 1)
        return round(steps / timed(lambda: run(b, 1, 1)), 2)

    t = time.perf_counter()
    pipe, params = make(device, torch.float32, smoke)
    build_s = time.perf_counter() - t
    b = backend(pipe, torch.float32, BASE_GEN)
    out = {"params_m": params, "size": size, "steps": steps, "dtype": str(half),
           "build_s": round(build_s, 1)}
    # 1. the notebook: fp32, one prompt per call
    if not a.no_loop:
        run(b, 1, 1)
        loop_s = timed(lambda: [b.run([prompts[j]], None, [seeds[j]], batch_size=1, **kw)
                                for j in range(n_loop)])
        out.update(loop_items_per_s=round(n_loop / loop_s, 3), loop_images=n_loop)
    # 2. itx: half precision, batched (the same components, converted in place)
    b.pipe.to(dtype=half)
    b.dtype = half
    run(b, 1, 1)
    one_s = timed(lambda: run(b, 1, 1))
    run(b, min(n_batch, b.max_batch))
    batch_s = timed(lambda: run(b, n_batch))
    out.update(batched_items_per_s=round(n_batch / batch_s, 3),
               half_batch1_s_per_image=round(one_s, 3),
               half_batch1_it_per_s=round(steps / one_s, 2), mini_batch=b.max_batch,
               batch_images=n_batch)
    if "loop_items_per_s" in out:
        out["ratio"] = round((loop_s / n_loop) / (batch_s / n_batch), 2)
    # 3. other mini-batch sizes (--batch-sizes)
    sweep = {b.max_batch: round(n_batch / batch_s, 3)}
    for bs in sizes:
        try:
            sweep[bs] = batched(b, bs)[0]
        except Exception as e:  # noqa: BLE001 - e.g. out of memory: keep the others
            out.setdefault("batch_size_errors", {})[str(bs)] = f"{type(e).__name__}: {e}"[:300]
    out["batch_sizes"] = {str(k): v for k, v in sorted(sweep.items())}
    b = pipe = None
    free()
    # 4. the fast paths (--sd-fast), each on a fresh pipeline at one batch size
    if name == "sd" and a.sd_fast:
        fast_bs = a.fast_batch or best(sweep)
        plain = sweep.get(fast_bs)
        out["fast"] = {"batch_size": fast_bs, "plain_items_per_s": plain}
        for v in a.sd_fast:
            r = out["fast"][v] = {}
            try:
                settings, kernel = variant(v)
                r["settings"] = {k: settings[k] for k in settings if settings[k] != BASE_GEN[k]}
                if kernel:
                    r["sdpa"] = kernel
                pipe, _ = make(device, half, smoke)
                b = backend(pipe, half, settings)
                with sdpa_context(kernel):
                    ips, warm = batched(b, fast_bs)
                    r.update(items_per_s=ips, image_it_per_s=round(ips * steps, 1),
                             warm_up_s=round(warm, 1))
                    if plain:
                        r["speedup"] = round(ips / plain, 2)
                    if settings["generate_compile"] == "off" or a.compiled_batch1:
                        r["batch1_it_per_s"] = batch1(b)
            except Exception as e:  # noqa: BLE001 - keep the other variants
                traceback.print_exc()
                r["error"] = f"{type(e).__name__}: {e}"[:500]
            b = pipe = None
            free()
            if a.partial:
                a.partial(out)
    out["best_items_per_s"] = max([*sweep.values()] + [
        f["items_per_s"] for f in out.get("fast", {}).values()
        if isinstance(f, dict) and "items_per_s" in f])
    return out


def card() -> dict:
    import diffusers
    import torch
    import transformers

    info = {"torch": torch.__version__, "transformers": transformers.__version__,
            "diffusers": diffusers.__version__, "python": platform.python_version()}
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        info.update(card=torch.cuda.get_device_name(0), capability=f"{p.major}.{p.minor}",
                    memory_gb=round(p.total_memory / 2**30, 1), cuda=torch.version.cuda)
    else:
        info["card"] = "none (CPU)"
    return info


# published figures printed beside ours (none of them is on the same card and software)
REFERENCES = {
    "sd": "fal-ai/stable-diffusion-benchmarks, A100 80GB SXM, SD 1.5 512², batch 1, end to end "
          "(torch 2.1): diffusers + SDPA 31.19 it/s, + compile 36.93 it/s, + compile + "
          "channels-last 47.29 it/s",
    "sdxl": "MLPerf Inference SDXL (1024², 20 steps, offline): about 2.3 images/s per H100 (as "
            "issue 15 quotes it); fal-ai A100 80GB SXM SDXL 1024² batch 1: diffusers + SDPA "
            "8.43 it/s",
    "flux-schnell": "none at hand offline for 1024², 4 steps on this card class",
}
TARGETS = {"sd": 10.0, "blip": 500.0}  # issue 15: images/s, captions/s (batched, half)


def csv(kind):
    return lambda v: [kind(x) for x in v.split(",") if x.strip()]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(MODELS + NEW_MODELS))
    ap.add_argument("--compile", action="store_true", help="the same as --sd-fast compile")
    ap.add_argument("--sd-fast", type=csv(str), default=[],
                    help="SD variants to measure, each on a fresh pipeline at one batch size: "
                         "comma-separated, parts joined with + (" + ", ".join(FAST) + "), "
                         "e.g. fuse,channels-last,fuse+channels-last+compile")
    ap.add_argument("--fast-batch", type=int, help="their batch size (default: the best of "
                    "the --batch-sizes sweep)")
    ap.add_argument("--compiled-batch1", action="store_true",
                    help="also batch-1 it/s of compiled variants (one more compile each)")
    ap.add_argument("--batch-sizes", type=csv(int), default=[],
                    help="generators: more mini-batch sizes to measure, e.g. 8,16,32")
    ap.add_argument("--caption-batch-sizes", type=csv(int), default=[],
                    help="captioners and VQA: more mini-batch sizes, e.g. 64,128,256")
    ap.add_argument("--caption-static-cache", "--blip-static-cache", action="store_true",
                    help="captioners: also with ITX_CAPTION_STATIC_CACHE")
    ap.add_argument("--caption-compile", "--blip-compile", action="store_true",
                    help="captioners: also with ITX_CAPTION_COMPILE (static cache, compiled step)")
    ap.add_argument("--no-loop", action="store_true", help="skip the fp32 per-image loops")
    ap.add_argument("--pipeline", action="store_true",
                    help="the default stages end to end in embedded mode (gpu_pipeline.py)")
    ap.add_argument("--pipeline-images", type=int, default=256)
    ap.add_argument("--pipeline-chunk", type=int, default=64)
    ap.add_argument("--smoke", action="store_true", help="tiny widths, any device: code path only")
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--steps", type=int, default=SD_STEPS)
    ap.add_argument("--loop-images", type=int, default=16)
    ap.add_argument("--batch-images", type=int, default=128)
    ap.add_argument("--gen-loop-images", type=int, default=2)
    ap.add_argument("--gen-batch-images", type=int, default=16)
    ap.add_argument("--tmp", type=Path, help="where checkpoints are written (FLUX: 34 GB)")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu.json")
    a = ap.parse_args()
    if a.compile and "compile" not in a.sd_fast:
        a.sd_fast.append("compile")
    for v in a.sd_fast:
        variant(v)  # a misspelt variant fails here, not after minutes of other models
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=140)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        console.print("[yellow]no GPU here: running --smoke (tiny widths) instead")
        a.smoke = True
    half = getattr(torch, a.dtype) if device == "cuda" else torch.float32
    res = {"machine": card(), "args": {k: str(v) for k, v in vars(a).items()}, "models": {}}
    console.print(f"[bold]card:[/] {res['machine']['card']}  torch {res['machine']['torch']}  "
                  f"transformers {res['machine']['transformers']}  "
                  f"diffusers {res['machine']['diffusers']}")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    if a.tmp:
        a.tmp.mkdir(parents=True, exist_ok=True)
    if a.pipeline:  # the real workers package (Celery app and all): not stage_modules()
        from gpu_pipeline import bench_pipeline  # benchmarks/gpu_pipeline.py

        with tempfile.TemporaryDirectory(prefix="itx-gpu-pipeline-", dir=a.tmp) as tmp:
            res["pipeline"] = bench_pipeline(a, device, half, Path(tmp), console)
        a.out.write_text(json.dumps(res, indent=1))
        console.print(f"results: {a.out}")
        return 0 if not res["pipeline"].get("error") else 1
    stage_modules()
    names = [n.strip() for n in a.only.split(",")] if a.only else MODELS + NEW_MODELS
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="itx-gpu-bench-", dir=a.tmp) as tmp:
        for name in names:
            t = time.perf_counter()

            def partial(r, name=name):  # a variant's figures survive a later timeout
                res["models"][name] = r
                a.out.write_text(json.dumps(res, indent=1))

            a.partial = partial
            try:
                if name in NEW_MODELS:
                    from gpu_new import bench_new  # benchmarks/gpu_new.py, next to this script

                    r = bench_new(name, a, device, half, Path(tmp))
                elif name in ("sd", "if"):
                    r = bench_generator(name, a, device, half)
                else:
                    r = bench_captioner(name, a, device, half, Path(tmp))
            except Exception as e:  # noqa: BLE001 - one model failing loses no other figure
                traceback.print_exc()
                r = {"error": f"{type(e).__name__}: {e}"}
                free()
            r["seconds"] = round(time.perf_counter() - t, 1)
            if name in REFERENCES:
                r["published"] = REFERENCES[name]
            partial(r)
            console.print(f"{name}: {json.dumps(r)}")
    res["seconds"] = round(time.perf_counter() - t0, 1)
    blip = res["models"].get("blip", {})
    if "ratio" in blip and device == "cuda":
        met = blip["ratio"] >= 10
        res["target_blip_10x"] = {"value": blip["ratio"], "target": ">= 10", "met": met}
    for name, want in TARGETS.items():  # issue 15's throughput targets, the best of any variant
        got = res["models"].get(name, {}).get("best_items_per_s")
        if got is not None and device == "cuda":
            res[f"target_{name}_per_s"] = {"value": got, "target": f">= {want}", "met": got >= want}
    a.out.write_text(json.dumps(res, indent=1))
    print_tables(res, a, device, console, Table)
    console.print(f"total {res['seconds']} s; results: {a.out}")
    return 0


def print_tables(res: dict, a, device: str, console, Table) -> None:
    t = Table(title=f"GPU: {res['machine']['card']} — fp32 per-image loop vs "
                    f"{a.dtype if device == 'cuda' else 'fp32 (smoke)'} batched (itx backends)")
    for c in ("model", "loop items/s", "batched items/s", "ratio", "notes"):
        t.add_column(c, justify="left" if c in ("model", "notes") else "right")
    fmt = lambda r, k, f="{:.2f}": f.format(r[k]) if k in r else "-"
    for name, r in res["models"].items():
        if "error" in r:
            t.add_row(name, "-", "-", "-", f"[red]{r['error'][:60]}")
            continue
        note = f"batch {r['mini_batch']}"
        if "half_batch1_it_per_s" in r:
            note += f", {r['size']}px {r['steps']} steps, {r['dtype'].removeprefix('torch.')} batch 1: " \
                    f"{r['half_batch1_it_per_s']} it/s"
        if len(r.get("batch_sizes", {})) > 1:
            note += "; by batch: " + ", ".join(f"{k}: {v}" for k, v in r["batch_sizes"].items())
        t.add_row(name, fmt(r, "loop_items_per_s"), fmt(r, "batched_items_per_s"),
                  fmt(r, "ratio", "{:.1f}x"), note)
    console.print(t)
    fast = [(n, r["fast"]) for n, r in res["models"].items() if isinstance(r.get("fast"), dict)]
    if fast:
        t = Table(title="fast paths, each against the plain backend at the same batch size")
        for c in ("model", "variant", "items/s", "speedup", "batch-1 it/s", "warm-up s", "notes"):
            t.add_column(c, justify="left" if c in ("model", "variant", "notes") else "right")
        for name, f in fast:
            t.add_row(name, f"plain (batch {f['batch_size']})", str(f["plain_items_per_s"]),
                      "1.00", "", "", "")
            for v, r in f.items():
                if not isinstance(r, dict) or v == "settings":
                    continue
                if "error" in r:
                    t.add_row(name, v, "-", "-", "-", "-", f"[red]{r['error'][:60]}")
                    continue
                t.add_row(name, v, str(r["items_per_s"]), fmt(r, "speedup"),
                          str(r.get("batch1_it_per_s", "-")), fmt(r, "warm_up_s", "{:.0f}"),
                          json.dumps(r.get("settings", {}))[:60])
        console.print(t)
    for k, v in res.items():
        if k.startswith("target_"):
            console.print(f"{k[7:]}: {v['value']} (target {v['target']}): "
                          f"{'met' if v['met'] else 'MISSED'}")
    for name, r in res["models"].items():
        if "published" in r:
            console.print(f"[dim]published, {name}: {r['published']}")


if __name__ == "__main__":
    sys.exit(main())
