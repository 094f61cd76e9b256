"""Stable Diffusion (1.x, 2.x, SDXL): text-to-image, and image-to-image on the same weights."""
from __future__ import annotations

import math

from workers.stages.generate import fit
from workers.stages.generate.diffusion import Diffusion


class StableDiffusion(Diffusion):
    """Text-to-image; the pipeline class comes from the checkpoint's ``model_index.json``."""

    pipeline_class = "AutoPipelineForText2Image"


class StableDiffusionImg2Img(Diffusion):
    """Image-to-image that shares the loaded text-to-image backend's components (its
    declaration's ``shares``; no second copy): each source is fitted to width x height
    (scaled to cover, centre cropped), re-noised by ``strength`` and denoised towards the
    prompt."""

    def load(self, ref: str, device: str, dtype) -> None:
        from diffusers import AutoPipelineForImage2Image

        from workers.models.cache import load_backend

        self.device, self.dtype = device, dtype
        stage, name = self.decl.shares.split(":", 1)
        base = load_backend(stage, name, ref=self.ref or ref, device=device,
                            dtype=str(dtype).removeprefix("torch."))
        self.setup(AutoPipelineForImage2Image.from_pipe(base.pipe), device)

    def prepare(self, images, width, height, strength):
        if images is None or any(im is None for im in images):
            raise ValueError(f"generate:{self.name} needs a source image for every prompt")
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        return [fit(im, width, height) for im in images]

    def pipe_kwargs(self, prompts, images, *, width, height, steps, strength, guidance_scale):
        # diffusers runs int(steps * strength) steps; never let that round down to zero
        return dict(prompt=prompts, image=images, strength=strength,
                    num_inference_steps=max(steps, math.ceil(1 / strength)),
                    guidance_scale=guidance_scale)
