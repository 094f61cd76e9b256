"""SD-Turbo and SDXL-Turbo: Stable Diffusion 2.1 / SDXL distilled (adversarial diffusion
distillation) to 1-4 steps without classifier-free guidance; image-to-image on the same
loaded components. The family defaults (1 step, guidance 0, 512 px) are in the declarations."""
from __future__ import annotations

from workers.stages.generate.sd import StableDiffusion


class Turbo(StableDiffusion):
    """Text-to-image; the checkpoint's ``model_index.json`` names the SD 2.1 or SDXL pipeline.
    Its image-to-image variants are ``sd.StableDiffusionImg2Img`` sharing these components
    (their declarations' ``shares``)."""
