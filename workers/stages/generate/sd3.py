"""Stable Diffusion 3.5 (medium in base, large in large; gated: accept the Stability AI
community licence on the hub): an MM-DiT with CLIP-L, CLIP-G and T5-XXL text encoders."""
from __future__ import annotations

from workers.stages.generate.diffusion import Diffusion
from workers.stages.generate.flux import on_grid


class StableDiffusion3(Diffusion):
    pipeline_class = "StableDiffusion3Pipeline"

    def pipe_kwargs(self, prompts, images, *, width, height, steps, strength, guidance_scale):
        # latents are 1/8 of the image in 2x2 patches: generate on the 16 px grid, then fit
        return dict(prompt=prompts, width=on_grid(width), height=on_grid(height),
                    num_inference_steps=steps, guidance_scale=guidance_scale)
