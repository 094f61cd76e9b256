"""Generate: prompts (and source images) to new images.

Backends, all called the same way on one mini-batch::

    backend(prompts, images, seeds, width=512, height=512, steps=30, n=1)
        -> list[list[PIL.Image]]     # n images per prompt, each exactly width x height

``sd``          text-to-image with a Stable Diffusion checkpoint; the pipeline class comes
                from the checkpoint's ``model_index.json`` (SD 1.x/2.x or SDXL).
``sd-img2img``  image-to-image on the *same loaded components* as ``sd`` (no second copy):
                each source image is fitted to width x height (scaled to cover, centre
                cropped), then re-noised by ``strength`` and denoised towards the prompt.
``if``          DeepFloyd IF stage I. It generates at its native resolution (64x64 for
                the real models) and the result is **upscaled with PIL (bicubic)** to
                width x height; the IF super-resolution stages are not run.

Seeds are a column like the prompts (one per item), so ``Backend.run`` slices them with
the prompts: each image gets its own generator seeded from its item's seed and its index
among that item's ``n`` images, never from its position in a mini-batch. Build the column
with :func:`item_seeds`. Text-to-image backends ignore ``images`` (pass ``None``).
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from PIL import Image, ImageOps

from workers.models.registry import register
from workers.stages.base import Backend

log = logging.getLogger(__name__)

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
MAX_SIDE = 4096


# --- small helpers the orchestrator and tasks use ---------------------------------

def resolve_size(size: str) -> tuple[int, int]:
    """``"512x512"`` -> ``(512, 512)`` (width, height); both sides multiples of 8."""
    m = _SIZE.match(str(size))
    if not m:
        raise ValueError(f"size {size!r} is not WIDTHxHEIGHT, e.g. 512x512")
    w, h = int(m.group(1)), int(m.group(2))
    check_size(w, h)
    return w, h


def check_size(width: int, height: int) -> None:
    for side, v in (("width", width), ("height", height)):
        if v <= 0 or v % 8:
            raise ValueError(
                f"{side} {v} must be a positive multiple of 8 (the latent grid is 1/8 of the image); "
                f"try {max(8, round(v / 8) * 8)}"
            )
        if v > MAX_SIDE:
            raise ValueError(f"{side} {v} is larger than {MAX_SIDE}")


def item_seeds(seed: int, keys: Iterable[int | str]) -> list[int]:
    """One seed per item: ``seed + i`` for an integer position ``i`` in the whole run, or a
    stable hash of ``seed`` and a string item id (independent of order and chunking)."""
    out = []
    for k in keys:
        if isinstance(k, int):
            out.append((seed + k) % 2**63)
        else:
            out.append(_hash_seed(f"{seed}:{k}"))
    return out


def image_seed(seed: int, j: int) -> int:
    """The seed of image ``j`` of an item with seed ``seed``; image 0 uses the item seed itself."""
    return seed % 2**63 if j == 0 else _hash_seed(f"{seed}/{j}")


def _hash_seed(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1


def _fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, centre crop; no distortion."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)


# --- backends ---------------------------------------------------------------------

class _Diffusion(Backend):
    """What every diffusers-based generate backend shares: loading, per-image generators,
    one pipeline row per output image, regrouping per prompt."""

    batch_size: ClassVar[dict[str, int]] = {"cpu": 4, "cuda": 8}
    # keep the checkpoint's safety checker (and IF's watermarker) when it ships one
    safety_checker: ClassVar[bool] = True
    # torch.compile the UNet on CUDA (slow first call, faster after; off by default)
    compile: ClassVar[bool] = False

    pipe: Any = None

    # 1. loading
    def _finish_load(self, pipe, device: str) -> None:
        pipe.set_progress_bar_config(disable=True)
        pipe.to(device)
        # SDPA attention is diffusers' default on torch 2; no attention slicing (it costs speed)
        if device.startswith("cuda"):
            pipe.unet.to(memory_format=torch.channels_last)
            if self.compile:
                pipe.unet = torch.compile(pipe.unet)
        self.pipe = pipe

    def _no_safety_kwargs(self, ref: str) -> dict:
        if self.safety_checker:
            return {}
        index = Path(ref) / "model_index.json"
        names = json.loads(index.read_text()) if index.exists() else {}
        if "safety_checker" not in names:
            return {}
        return {"safety_checker": None, "feature_extractor": None, "requires_safety_checker": False}

    # 2. inputs to one row per output image
    def _rows(self, prompts: Sequence[str], seeds: Sequence[int] | None, n: int,
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

    # 4. regroup
    @staticmethod
    def _group(out: list, n: int) -> list[list]:
        return [out[k:k + n] for k in range(0, len(out), n)]

    def _warn_nsfw(self, flags) -> None:
        if flags is not None and any(bool(f) for f in flags):
            log.warning("generate:%s: the safety checker blanked %d of %d images",
                        self.name, sum(bool(f) for f in flags), len(flags))


@register("generate", "sd")
class StableDiffusion(_Diffusion):
    """Text-to-image with any Stable Diffusion checkpoint (SD 1.x/2.x, SDXL)."""

    def load(self, ref: str, device: str, dtype) -> None:
        from diffusers import AutoPipelineForText2Image

        self.device, self.dtype = device, dtype
        from workers.models.trust import use_safetensors

        pipe = AutoPipelineForText2Image.from_pretrained(ref, dtype=dtype,
                                                          use_safetensors=use_safetensors(),
                                                          **self._no_safety_kwargs(ref))
        self._finish_load(pipe, device)

    def __call__(self, prompts: list[str], images: list | None, seeds: list[int], *, width: int,
                 height: int, steps: int, n: int = 1, strength: float = 0.75,
                 guidance_scale: float = 7.5) -> list[list[Image.Image]]:
        # 1. check inputs
        check_size(width, height)
        # 2. one row per output image, each with its own generator
        rows, gens, _ = self._rows(prompts, seeds, n)
        # 3. denoise
        with torch.inference_mode():
            res = self.pipe(prompt=rows, width=width, height=height, num_inference_steps=steps,
                            guidance_scale=guidance_scale, generator=gens, output_type="pil")
        self._warn_nsfw(getattr(res, "nsfw_content_detected", None))
        # 4. n images per prompt
        return self._group(list(res.images), n)


@register("generate", "sd-img2img")
class StableDiffusionImg2Img(_Diffusion):
    """Image-to-image that shares the loaded ``sd`` backend's components."""

    def load(self, ref: str, device: str, dtype) -> None:
        from diffusers import AutoPipelineForImage2Image

        from workers.models.cache import load_backend

        self.device, self.dtype = device, dtype
        sd = load_backend("generate", "sd", ref=self.ref or ref, device=device,
                          dtype=str(dtype).removeprefix("torch."))
        self.txt2img = sd
        # the same unet/vae/text encoder objects; only the pipeline wrapper is new
        pipe = AutoPipelineForImage2Image.from_pipe(sd.pipe)
        pipe.set_progress_bar_config(disable=True)
        self.pipe = pipe

    def __call__(self, prompts: list[str], images: list[Image.Image], seeds: list[int], *,
                 width: int, height: int, steps: int, n: int = 1, strength: float = 0.75,
                 guidance_scale: float = 7.5) -> list[list[Image.Image]]:
        # 1. check inputs
        check_size(width, height)
        if images is None or any(im is None for im in images):
            raise ValueError("generate:sd-img2img needs a source image for every prompt")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        # diffusers runs int(steps * strength) steps; never let that round down to zero
        steps = max(steps, math.ceil(1 / strength))
        # 2. sources fitted to the output size; one row per output image
        fitted = [_fit(im, width, height) for im in images]
        rows, gens, srcs = self._rows(prompts, seeds, n, fitted)
        # 3. re-noise and denoise
        with torch.inference_mode():
            res = self.pipe(prompt=rows, image=srcs, strength=strength, num_inference_steps=steps,
                            guidance_scale=guidance_scale, generator=gens, output_type="pil")
        self._warn_nsfw(getattr(res, "nsfw_content_detected", None))
        # 4. n images per prompt
        return self._group(list(res.images), n)


@register("generate", "if")
class DeepFloydIF(_Diffusion):
    """DeepFloyd IF stage I, upscaled to the requested size with PIL."""

    # IF's caption cleaning needs beautifulsoup4 and ftfy; off keeps the prompt as written
    clean_caption: ClassVar[bool] = False

    def load(self, ref: str, device: str, dtype) -> None:
        from diffusers import IFPipeline

        self.device, self.dtype = device, dtype
        kw = {} if self.safety_checker else {"safety_checker": None, "feature_extractor": None,
                                             "watermarker": None, "requires_safety_checker": False}
        from workers.models.trust import use_safetensors

        pipe = IFPipeline.from_pretrained(ref, dtype=dtype, use_safetensors=use_safetensors(), **kw)
        self._finish_load(pipe, device)

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size)

    def __call__(self, prompts: list[str], images: list | None, seeds: list[int], *, width: int,
                 height: int, steps: int, n: int = 1, strength: float = 0.75,
                 guidance_scale: float = 7.5) -> list[list[Image.Image]]:
        # 1. check inputs
        check_size(width, height)
        # 2. one row per output image
        rows, gens, _ = self._rows(prompts, seeds, n)
        # 3. stage I at its native resolution
        s = self.native_size
        with torch.inference_mode():
            res = self.pipe(prompt=rows, height=s, width=s, num_inference_steps=steps,
                            guidance_scale=guidance_scale, generator=gens, output_type="pil",
                            clean_caption=self.clean_caption)
        self._warn_nsfw(res.nsfw_detected)
        # 4. upscale (stage I is s x s; no IF super-resolution stage runs here)
        out = [im if im.size == (width, height) else im.resize((width, height), Image.Resampling.BICUBIC)
               for im in res.images]
        return self._group(out, n)
