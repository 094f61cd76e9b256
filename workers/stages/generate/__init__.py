"""Generate: prompts (and source images) to new images.

Backends, all called the same way on one mini-batch::

    backend(prompts, images, seeds, width=512, height=512, steps=30, n=1)
        -> list[list[PIL.Image]]     # n images per prompt, each exactly width x height

Every backend is a small subclass of :class:`workers.stages.generate.diffusion.Diffusion`
(one module per family); the declaration in the stage table names it.

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
import re
from collections.abc import Iterable

from PIL import Image, ImageOps

_SIZE = re.compile(r"^\s*(\d+)\s*[xX×]\s*(\d+)\s*$")
MAX_SIDE = 4096


class Images(list):
    """One prompt's generated images, with the safety checker's verdict on each in ``nsfw``
    (``None`` where the pipeline has no checker); the pipeline puts them in ``flags``."""

    def __init__(self, images=(), nsfw=None):
        super().__init__(images)
        self.nsfw = list(nsfw) if nsfw is not None else [None] * len(self)


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


def fit(image: Image.Image, width: int, height: int) -> Image.Image:
    """Scale to cover width x height, centre crop; no distortion."""
    image = image.convert("RGB")
    if image.size == (width, height):
        return image
    return ImageOps.fit(image, (width, height), Image.Resampling.LANCZOS)
