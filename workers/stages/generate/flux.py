"""FLUX.1 [schnell]: a 12B rectified-flow transformer with CLIP + T5 text encoders, distilled
to 1-4 steps without guidance; image-to-image on the same loaded components (FluxImg2Img)."""
from __future__ import annotations

from typing import ClassVar

from workers.stages.generate import fit
from workers.stages.generate.diffusion import Diffusion
from workers.stages.generate.sd import StableDiffusionImg2Img

GRID = 16  # latents are 1/8 of the image, packed 2x2: sides are multiples of 16


def on_grid(v: int) -> int:
    return -(-v // GRID) * GRID


class Flux(Diffusion):
    pipeline_class = "FluxPipeline"
    max_sequence_length: ClassVar[int] = 256  # schnell's T5 limit (dev: 512)

    def pipe_kwargs(self, prompts, images, *, width, height, steps, strength, guidance_scale):
        # a size off the 16 px grid is generated on it and fitted back (Diffusion.finish)
        return dict(prompt=prompts, width=on_grid(width), height=on_grid(height),
                    num_inference_steps=steps, guidance_scale=guidance_scale,
                    max_sequence_length=self.max_sequence_length)


class FluxImg2Img(StableDiffusionImg2Img):
    """Image-to-image on flux-schnell's loaded components (its declaration's ``shares``)."""

    max_sequence_length: ClassVar[int] = 256

    def prepare(self, images, width, height, strength):
        images = super().prepare(images, width, height, strength)
        return [fit(im, on_grid(width), on_grid(height)) for im in images]

    def pipe_kwargs(self, prompts, images, *, width, height, steps, strength, guidance_scale):
        kw = super().pipe_kwargs(prompts, images, width=width, height=height, steps=steps,
                                 strength=strength, guidance_scale=guidance_scale)
        w, h = images[0].size
        return {**kw, "width": w, "height": h, "max_sequence_length": self.max_sequence_length}
