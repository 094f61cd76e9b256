"""What every diffusers-based generator shares; a family's module only says how to load
its pipeline and what to pass it.

``__call__`` reads as the steps of every generator: 1. check inputs, 2. one pipeline row per
output image (each with its own seeded generator), 3. denoise, 4. regroup per prompt. Nothing
here assumes a UNet: the denoiser is the pipeline's ``unet`` or its ``transformer``.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image

from workers.stages.base import Backend
from workers.stages.generate import Images, check_size, fit, image_seed

log = logging.getLogger(__name__)


class Diffusion(Backend):
    """A diffusers pipeline as a generate backend::

        backend(prompts, images, seeds, width=512, height=512, steps=30, n=1)
            -> list[list[PIL.Image]]     # n images per prompt
    """

    pipeline_class: ClassVar[str] = "AutoPipelineForText2Image"  # a diffusers class name
    # keep the checkpoint's safety checker (and IF's watermarker) when it ships one
    safety_checker: ClassVar[bool] = True

    pipe: Any = None

    # --- loading --------------------------------------------------------------------------
    def load(self, ref: str, device: str, dtype) -> None:
        import diffusers

        from workers.models.trust import use_safetensors

        self.device, self.dtype = device, dtype
        cls = getattr(diffusers, self.pipeline_class)
        self.setup(cls.from_pretrained(ref, dtype=dtype, use_safetensors=use_safetensors(),
                                       **self.load_kwargs(ref)), device)

    def load_kwargs(self, ref: str) -> dict:
        """Without the safety checker, when the class says so and the checkpoint has one."""
        if self.safety_checker:
            return {}
        index = Path(ref) / "model_index.json"
        names = json.loads(index.read_text()) if index.exists() else {}
        off = {k: None for k in ("safety_checker", "feature_extractor", "watermarker") if k in names}
        return {**off, "requires_safety_checker": False} if off else {}

    def setup(self, pipe, device: str) -> None:
        pipe.set_progress_bar_config(disable=True)
        fuse_qkv(pipe, device)  # before the move: the fused layers are made where the weights are
        if offload(device, pipe):  # each sub-model on the GPU only while it runs
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.to(device)
        # SDPA attention is diffusers' default on torch 2; no attention slicing (it costs speed)
        if device.startswith("cuda"):
            cuda_fast_paths(pipe)
        self.pipe = pipe

    # --- one mini-batch -------------------------------------------------------------------
    def __call__(self, prompts: list[str], images: list | None, seeds: list[int], *, width: int,
                 height: int, steps: int, n: int = 1, strength: float = 0.75,
                 guidance_scale: float = 7.5, negative_prompt: str | None = None,
                 **options) -> list[list[Image.Image]]:
        # 1. check inputs
        check_size(width, height)
        images = self.prepare(images, width, height, strength)
        # 2. one row per output image, each with its own generator
        rows, gens, srcs = self.rows(prompts, seeds, n, images)
        # 3. denoise
        kw = self.pipe_kwargs(rows, srcs, width=width, height=height, steps=steps,
                              strength=strength, guidance_scale=guidance_scale)
        if negative_prompt and guidance_scale > 1:  # without guidance there is nothing to steer
            kw["negative_prompt"] = [negative_prompt] * len(rows)
        with torch.inference_mode():
            res = self.denoise(kw, gens, width=width, height=height, **options)
        flags = getattr(res, "nsfw_content_detected", None)
        if flags is None:
            flags = getattr(res, "nsfw_detected", None)
        self.warn_nsfw(flags)
        # 4. n images per prompt, with the safety checker's verdicts (they go in the record)
        out = [self.finish(im, width, height) for im in res.images]
        flags = list(flags) if flags is not None else [None] * len(out)
        return [Images(out[k:k + n], flags[k:k + n]) for k in range(0, len(out), n)]

    def denoise(self, kw: dict, generators: list, **options):
        """Run the pipeline (a cascade runs several here)."""
        return self.pipe(**kw, generator=generators, output_type="pil")

    def spec_kwargs(self, spec) -> dict:
        return {"negative_prompt": spec.negative_prompt}

    def stage_refs(self, spec) -> dict[str, str]:
        """``generate:<name> -> ref`` of every model this backend runs for the spec."""
        return {f"generate:{spec.generator}": spec.model_ref("generate", spec.generator)}

    def prepare(self, images, width: int, height: int, strength: float):
        """Source images as the pipeline takes them (text-to-image: none)."""
        return

    def pipe_kwargs(self, prompts: list[str], images, *, width: int, height: int, steps: int,
                    strength: float, guidance_scale: float) -> dict:
        return {"prompt": prompts, "width": width, "height": height,
                "num_inference_steps": steps, "guidance_scale": guidance_scale}

    def finish(self, image: Image.Image, width: int, height: int) -> Image.Image:
        """The pipeline's image at exactly width x height (a family whose native grid is
        coarser than 8 px, or a cascade stage's fixed size, is fitted: cover, centre crop)."""
        return image if image.size == (width, height) else fit(image, width, height)

    def rows(self, prompts: Sequence[str], seeds: Sequence[int] | None, n: int,
             images: Sequence[Image.Image | None] | None = None):
        if seeds is None:
            raise ValueError(f"generate:{self.name} needs a seeds column (one int per prompt); "
                             f"build it with workers.stages.generate.item_seeds(seed, range(len(prompts)))")
        if n < 1:
            raise ValueError(f"n must be at least 1, got {n}")
        rows_p, rows_g, rows_i = [], [], []
        for i, (p, s) in enumerate(zip(prompts, seeds, strict=True)):
            for j in range(n):
                rows_p.append(p)
                rows_g.append(torch.Generator(self.device).manual_seed(image_seed(int(s), j)))
                if images is not None:
                    rows_i.append(images[i])
        return rows_p, rows_g, rows_i

    def warn_nsfw(self, flags) -> None:
        if flags is not None and any(bool(f) for f in flags):
            log.warning("generate:%s: the safety checker blanked %d of %d images",
                        self.name, sum(bool(f) for f in flags), len(flags))


def offload(device: str, pipe) -> bool:
    """``ITX_GENERATE_OFFLOAD``: on, off, or auto: on when the pipeline's weights would take
    more than half of the GPU (the rest is for activations and the other pool's models)."""
    from workers.settings import get_settings

    mode = get_settings().generate_offload
    if not device.startswith("cuda") or mode == "off":
        return False
    if mode == "on":
        return True
    weights = sum(p.numel() * p.element_size() for m in pipe.components.values()
                  if isinstance(m, torch.nn.Module) for p in m.parameters())
    return weights > torch.cuda.get_device_properties(torch.device(device)).total_memory / 2


def denoiser(pipe) -> str:
    """The pipeline's denoiser attribute: ``unet``, or ``transformer`` (FLUX, SD3)."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def fuse_qkv(pipe, device: str) -> list[str]:
    """``ITX_GENERATE_FUSE_QKV``: each attention's q, k, v projections (k, v where it attends
    to the text) become one matmul, in the denoiser and the VAE; the same maths, one kernel
    instead of three. Models with added KV projections (IF's UNet) stay as they are. Returns
    the components fused; a component shared with another pipeline (img2img) is fused once."""
    from workers.settings import get_settings

    mode = get_settings().generate_fuse_qkv
    if mode == "off" or (mode == "auto" and not device.startswith("cuda")):
        return []
    done = []
    for name in (denoiser(pipe), "vae"):
        model = getattr(pipe, name, None)
        if model is None or not hasattr(model, "fuse_qkv_projections"):
            continue
        if not getattr(model, "_itx_fused", False):
            try:
                model.fuse_qkv_projections()
            except ValueError as e:  # "not supported for models having added KV projections"
                log.info("generate: %s keeps separate q/k/v projections (%s)", name, e)
                continue
            model._itx_fused = True
        done.append(name)
    return done


def cuda_fast_paths(pipe) -> None:
    """``ITX_GENERATE_CHANNELS_LAST`` (denoiser, or denoiser and VAE) and ``ITX_GENERATE_COMPILE``
    (torch.compile of the denoiser, or of the denoiser and the VAE decoder, in
    ``ITX_GENERATE_COMPILE_MODE``). CUDA only; a component shared with another pipeline is
    compiled once."""
    from workers.settings import get_settings

    s = get_settings()
    name, vae = denoiser(pipe), getattr(pipe, "vae", None)
    net = getattr(pipe, name, None)
    if net is None:
        return
    if s.generate_channels_last != "off":
        net = net.to(memory_format=torch.channels_last)
        if s.generate_channels_last == "all" and vae is not None:
            vae.to(memory_format=torch.channels_last)
    if s.generate_compile != "off":
        if not hasattr(net, "_orig_mod"):  # not compiled yet
            net = torch.compile(net, mode=s.generate_compile_mode)
        if s.generate_compile == "all" and vae is not None and "decode" not in vars(vae):
            vae.decode = torch.compile(vae.decode, mode=s.generate_compile_mode)
    setattr(pipe, name, net)
