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
NEW_MODELS = ["florence-2", "smolvlm", "qwen2.5-vl", "sd-turbo", "sdxl-turbo", "flux-schnell"]
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


def write_captioner(name: str, root: Path, device: str, smoke: bool) -> tuple[Path, float]:
    """Random full-size checkpoint in ``root/name`` (fp16 on disk), as the hub lays it out."""
    import torch
    from transformers import GenerationConfig

    cls, config, processing, gen = caption_parts(name, smoke)
    with torch.device(device):
        model = cls(config) if cls.__name__ != "VisionEncoderDecoderModel" else cls(config=config)
    params = sum(p.numel() for p in model.parameters()) / 1e6
    model.generation_config = GenerationConfig(**gen)
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
def bench_captioner(name: str, a, device: str, half, root: Path) -> dict:
    import torch

    caption, vqa, _ = stage_modules()
    t = time.perf_counter()
    path, params = write_captioner(name, root, device, a.smoke)
    build_s = time.perf_counter() - t
    cls = vqa.BlipVQA if name == "blip-vqa" else caption.ImageToText
    kw = {"max_new_tokens": NEW_TOKENS, "min_new_tokens": NEW_TOKENS}
    n_loop, n_batch = (2, 4) if a.smoke else (a.loop_images, a.batch_images)
    imgs = photos(max(n_loop, n_batch))

    def cols(k):
        return [imgs[:k]] + ([[["what is in the picture?"]] * k] if name == "blip-vqa" else [])

    def load(dtype):
        b = cls()
        b.ref = str(path)
        b.load(str(path), device, dtype)
        return b

    # 1. the notebook: fp32, one image per call
    b32 = load(torch.float32)
    c = cols(n_loop)
    b32.run(*[x[:1] for x in c], batch_size=1, **kw)  # warm-up
    loop_s = timed(lambda: [b32.run(*[[x[j]] for x in c], batch_size=1, **kw)
                            for j in range(n_loop)])
    b32 = None
    free()
    # 2. itx: half precision, the backend's own mini-batch size for the device
    b = load(half)
    c = cols(n_batch)
    b.run(*[x[:b.max_batch] for x in c], **kw)  # warm-up at the full batch shape
    batch_s = timed(lambda: b.run(*c, **kw))
    attn = b.model.config._attn_implementation
    out = {"params_m": round(params, 1), "loop_items_per_s": round(n_loop / loop_s, 2),
           "batched_items_per_s": round(n_batch / batch_s, 2),
           "ratio": round((loop_s / n_loop) / (batch_s / n_batch), 2),
           "mini_batch": b.max_batch, "dtype": str(half), "attention": attn,
           "new_tokens": NEW_TOKENS, "loop_images": n_loop, "batch_images": n_batch,
           "build_s": round(build_s, 1)}
    b = None
    free()
    return out


def bench_generator(name: str, a, device: str, half) -> dict:
    import torch

    _, _, generate = stage_modules()
    smoke = a.smoke
    size = 64 if smoke else (SD_SIZE if name == "sd" else 64)
    steps = 2 if smoke else a.steps
    n_loop, n_batch = (1, 2) if smoke else (a.gen_loop_images, a.gen_batch_images)
    cls = generate.StableDiffusion if name == "sd" else generate.DeepFloydIF
    t = time.perf_counter()
    pipe, params = (sd_pipe if name == "sd" else if_pipe)(device, torch.float32, smoke)
    build_s = time.perf_counter() - t
    b = cls()
    b.device, b.dtype = device, torch.float32
    b.setup(pipe, device)  # what load() does after from_pretrained
    prompts = [f"{PROMPT}, number {i}" for i in range(max(n_loop, n_batch))]
    seeds = generate.item_seeds(0, range(len(prompts)))
    kw = {"width": size, "height": size, "steps": steps}

    def run(k, bs=None):
        return b.run(prompts[:k], None, seeds[:k], batch_size=bs, **kw)

    # 1. the notebook: fp32, one prompt per call
    run(1, 1)
    loop_s = timed(lambda: [b.run([prompts[j]], None, [seeds[j]], batch_size=1, **kw)
                            for j in range(n_loop)])
    # 2. itx: half precision, batched (the same components, converted in place)
    b.pipe.to(dtype=half)
    b.dtype = half
    run(1, 1)
    one_s = timed(lambda: run(1, 1))
    run(min(n_batch, b.max_batch))
    batch_s = timed(lambda: run(n_batch))
    out = {"params_m": params, "size": size, "steps": steps, "dtype": str(half),
           "loop_items_per_s": round(n_loop / loop_s, 3),
           "batched_items_per_s": round(n_batch / batch_s, 3),
           "ratio": round((loop_s / n_loop) / (batch_s / n_batch), 2),
           "half_batch1_s_per_image": round(one_s, 3),
           "half_batch1_it_per_s": round(steps / one_s, 2),
           "mini_batch": b.max_batch, "loop_images": n_loop, "batch_images": n_batch,
           "build_s": round(build_s, 1)}
    if a.compile and name == "sd" and device.startswith("cuda"):
        try:
            b.pipe.unet = torch.compile(b.pipe.unet)
            t = time.perf_counter()
            run(1, 1)  # compiles
            out["compile_s"] = round(time.perf_counter() - t, 1)
            one_c = timed(lambda: run(1, 1))
            out["compiled_batch1_it_per_s"] = round(steps / one_c, 2)
            run(min(n_batch, b.max_batch))
            out["compiled_batched_items_per_s"] = round(n_batch / timed(lambda: run(n_batch)), 3)
        except Exception as e:  # keep the eager figures
            out["compile_error"] = f"{type(e).__name__}: {e}"[:500]
    b = pipe = None
    free()
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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(MODELS + NEW_MODELS))
    ap.add_argument("--compile", action="store_true", help="also torch.compile the SD UNet")
    ap.add_argument("--smoke", action="store_true", help="tiny widths, any device: code path only")
    ap.add_argument("--dtype", choices=["float16", "bfloat16"], default="float16")
    ap.add_argument("--steps", type=int, default=SD_STEPS)
    ap.add_argument("--loop-images", type=int, default=16)
    ap.add_argument("--batch-images", type=int, default=128)
    ap.add_argument("--gen-loop-images", type=int, default=2)
    ap.add_argument("--gen-batch-images", type=int, default=16)
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "out" / "gpu.json")
    a = ap.parse_args()
    import torch
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False)
    stage_modules()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not a.smoke:
        console.print("[yellow]no GPU here: running --smoke (tiny widths) instead")
        a.smoke = True
    half = getattr(torch, a.dtype) if device == "cuda" else torch.float32
    res = {"machine": card(), "args": {k: str(v) for k, v in vars(a).items()}, "models": {}}
    console.print(f"[bold]card:[/] {res['machine']['card']}  torch {res['machine']['torch']}  "
                  f"transformers {res['machine']['transformers']}  "
                  f"diffusers {res['machine']['diffusers']}")
    names = [n.strip() for n in a.only.split(",")] if a.only else MODELS + NEW_MODELS
    a.out.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="itx-gpu-bench-") as tmp:
        for name in names:
            t = time.perf_counter()
            try:
                if name in NEW_MODELS:
                    from gpu_new import bench_new  # benchmarks/gpu_new.py, next to this script

                    r = bench_new(name, a, device, half, Path(tmp))
                elif name in ("sd", "if"):
                    r = bench_generator(name, a, device, half)
                else:
                    r = bench_captioner(name, a, device, half, Path(tmp))
            except Exception as e:  # one model failing must not lose the others' figures
                traceback.print_exc()
                r = {"error": f"{type(e).__name__}: {e}"}
                free()
            r["seconds"] = round(time.perf_counter() - t, 1)
            res["models"][name] = r
            console.print(f"{name}: {json.dumps(r)}")
            a.out.write_text(json.dumps(res, indent=1))
    res["seconds"] = round(time.perf_counter() - t0, 1)
    blip = res["models"].get("blip", {})
    if "ratio" in blip and device == "cuda":
        met = blip["ratio"] >= 10
        res["target_blip_10x"] = {"value": blip["ratio"], "target": ">= 10", "met": met}
    a.out.write_text(json.dumps(res, indent=1))

    t = Table(title=f"GPU: {res['machine']['card']} — fp32 per-image loop vs "
                    f"{a.dtype if device == 'cuda' else 'fp32 (smoke)'} batched (itx backends)")
    for c in ("model", "loop items/s", "batched items/s", "ratio", "notes"):
        t.add_column(c, justify="left" if c in ("model", "notes") else "right")
    for name, r in res["models"].items():
        if "error" in r:
            t.add_row(name, "-", "-", "-", f"[red]{r['error'][:60]}")
            continue
        note = f"batch {r['mini_batch']}"
        if "half_batch1_it_per_s" in r:
            note += f", {r['size']}px {r['steps']} steps, {a.dtype} batch 1: " \
                    f"{r['half_batch1_it_per_s']} it/s"
            if "compiled_batch1_it_per_s" in r:
                note += f", compiled {r['compiled_batch1_it_per_s']} it/s"
        t.add_row(name, f"{r['loop_items_per_s']:.2f}", f"{r['batched_items_per_s']:.2f}",
                  f"{r['ratio']:.1f}x", note)
    console.print(t)
    if "target_blip_10x" in res:
        v = res["target_blip_10x"]
        console.print(f"BLIP batched vs loop: {v['value']}x (target >= 10x): "
                      f"{'met' if v['met'] else 'MISSED'}")
    console.print(f"total {res['seconds']} s; results: {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
