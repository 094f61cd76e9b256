"""DeepFloyd IF, the whole cascade as DeepFloyd documents it: stage I (64 px, text to image)
-> stage II super-resolution (x4, IFSuperResolutionPipeline, reusing stage I's T5 embeddings)
-> stage III, the Stable Diffusion x4 upscaler; it stops at the first stage whose output
reaches the requested size and fits that to width x height."""
from __future__ import annotations

from typing import ClassVar

from workers.stages.generate.diffusion import Diffusion

UP = 4  # each later stage makes the side 4x longer


class DeepFloydIF(Diffusion):
    pipeline_class = "IFPipeline"
    clean_caption: ClassVar[bool] = False  # IF's caption cleaning needs bs4 and ftfy
    later: ClassVar[tuple[str, ...]] = ("if-ii", "if-iii")  # the declarations of stages II, III
    guidance_later: ClassVar[tuple[float, ...]] = (4.0, 9.0)  # the stages' documented defaults
    noise_iii: ClassVar[int] = 100  # stage III's noise level in DeepFloyd's example

    def plan(self, width: int, height: int) -> list[str]:
        """The later stages needed for a width x height output (stage I alone at 64 px)."""
        side, out = int(self.pipe.unet.config.sample_size), []
        for name in self.later:
            if side >= max(width, height):
                break
            out, side = out + [name], side * UP
        return out

    def stage_refs(self, spec) -> dict[str, str]:
        return {f"generate:{n}": spec.model_ref("generate", n)
                for n in ["if", *self.plan(*spec.width_height)]}

    def spec_kwargs(self, spec) -> dict:
        refs = self.stage_refs(spec)
        return {**super().spec_kwargs(spec), "stages": [(n, refs[f"generate:{n}"])
                                                        for n in self.plan(*spec.width_height)]}

    def pipe_kwargs(self, prompts, images, *, width, height, steps, strength, guidance_scale):
        s = int(self.pipe.unet.config.sample_size)
        return dict(prompt=prompts, height=s, width=s, num_inference_steps=steps,
                    guidance_scale=guidance_scale)

    def denoise(self, kw, generators, *, width, height, stages=None, **_):
        from workers.models.cache import load_backend

        stages = [(n, None) for n in self.plan(width, height)] if stages is None else stages
        prompts, neg = kw.pop("prompt"), kw.pop("negative_prompt", None)
        pe, ne = self.pipe.encode_prompt(prompts, do_classifier_free_guidance=True,
                                         device=self.pipe._execution_device,
                                         negative_prompt=neg, clean_caption=self.clean_caption)
        last = lambda i: "pil" if i == len(stages) else "pt"
        res = self.pipe(prompt_embeds=pe, negative_prompt_embeds=ne, generator=generators,
                        output_type=last(0), **kw)
        for i, (name, ref) in enumerate(stages, 1):
            pipe = load_backend("generate", name, ref=ref, device=self.device,
                                dtype=str(self.dtype).removeprefix("torch.")).pipe
            text = (dict(prompt_embeds=pe, negative_prompt_embeds=ne) if i == 1 else
                    dict(prompt=prompts, negative_prompt=neg, noise_level=self.noise_iii))
            res = pipe(image=res.images, **text, generator=generators, output_type=last(i),
                       num_inference_steps=kw["num_inference_steps"],
                       guidance_scale=self.guidance_later[i - 1])
        return res


class IFStage(Diffusion):
    """Stage II or III of the ``if`` cascade: loaded and run by :class:`DeepFloydIF`."""

    def prepare(self, images, width, height, strength):
        raise ValueError(f"generate:{self.name or 'if-ii'} is a later stage of the DeepFloyd IF "
                         f"cascade; run --generator if (it runs this stage when --size asks)")


class IFStageII(IFStage):
    pipeline_class = "IFSuperResolutionPipeline"

    def load_kwargs(self, ref: str) -> dict:  # stage I's T5 embeds the prompts
        return {**super().load_kwargs(ref), "text_encoder": None}


class IFStageIII(IFStage):
    pipeline_class = "StableDiffusionUpscalePipeline"
