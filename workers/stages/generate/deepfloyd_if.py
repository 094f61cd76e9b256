"""DeepFloyd IF stage I, at its native resolution, upscaled to the requested size with PIL."""
from __future__ import annotations

from typing import ClassVar

from PIL import Image

from workers.stages.generate.diffusion import Diffusion


class DeepFloydIF(Diffusion):
    pipeline_class = "IFPipeline"
    # IF's caption cleaning needs beautifulsoup4 and ftfy; off keeps the prompt as written
    clean_caption: ClassVar[bool] = False

    @property
    def native_size(self) -> int:
        return int(self.pipe.unet.config.sample_size)

    def pipe_kwargs(self, prompts, images, *, width, height, steps, strength, guidance_scale):
        s = self.native_size
        return dict(prompt=prompts, height=s, width=s, num_inference_steps=steps,
                    guidance_scale=guidance_scale, clean_caption=self.clean_caption)

    def finish(self, image, width, height):
        # stage I is s x s; no IF super-resolution stage runs here
        if image.size == (width, height):
            return image
        return image.resize((width, height), Image.Resampling.BICUBIC)
