"""Florence-2 (Microsoft, MIT): one small encoder-decoder for captions at three lengths and for
OCR with boxes, each a task token (``<CAPTION>``, ``<DETAILED_CAPTION>``,
``<MORE_DETAILED_CAPTION>``, ``<OCR_WITH_REGION>``); one beam-search ``generate`` per
mini-batch, parsed by the processor's own ``post_process_generation``, as the model card does."""
from __future__ import annotations

from typing import ClassVar

import torch

from workers.stages.base import Backend
from workers.stages.caption.image_to_text import load_model, rgb, to_device

CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


class Florence2(Backend):
    task: ClassVar[str] = "<CAPTION>"  # --caption-prompt may name another caption task
    max_new_tokens: ClassVar[int] = 256
    num_beams: ClassVar[int] = 3  # the model card's

    def load(self, ref: str, device: str, dtype) -> None:
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        self.device, self.dtype = device, dtype
        self.model = load_model(ref, device, dtype, auto_cls=Florence2ForConditionalGeneration)
        self.processor = AutoProcessor.from_pretrained(ref)
        # never past the decoder's positions (a long document would overrun them)
        room = self.model.config.text_config.max_position_embeddings - 2
        self.new_tokens = min(self.max_new_tokens, room)

    def spec_kwargs(self, spec) -> dict:
        p = (spec.caption_prompt or "").strip().upper()
        return {"task": p} if p in CAPTION_TASKS else {}

    @torch.inference_mode()
    def generate(self, images, task: str) -> list[tuple[dict, float]]:
        """(the parsed answer, the sequence's mean token probability) per image."""
        images = rgb(images)
        inputs = to_device(self.processor(text=[task] * len(images), images=images,
                                          return_tensors="pt"), self.device, self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.new_tokens, do_sample=False,
                                  num_beams=self.num_beams, output_scores=True,
                                  return_dict_in_generate=True)
        texts = self.processor.batch_decode(out.sequences, skip_special_tokens=False)
        scores = getattr(out, "sequences_scores", None)
        conf = [1.0] * len(texts) if scores is None else torch.exp(scores.float()).tolist()
        return [(self.processor.post_process_generation(t, task=task, image_size=im.size)[task], c)
                for t, im, c in zip(texts, images, conf)]

    def __call__(self, images, task: str | None = None) -> list[str]:
        return [a.strip() for a, _ in self.generate(images, task or self.task)]


class Florence2OCR(Florence2):
    """OCR records with quadrilateral boxes; each line's conf is its sequence's probability."""

    task = "<OCR_WITH_REGION>"
    max_new_tokens = 1024

    def spec_kwargs(self, spec) -> dict:
        return {}

    def __call__(self, images, task: str | None = None) -> list[dict]:
        from workers.stages.ocr import assemble

        return [assemble([(t.replace("</s>", "").replace("<s>", ""), box, c)
                          for t, box in zip(a["labels"], a["quad_boxes"])], im.size)
                for (a, c), im in zip(self.generate(images, self.task), images)]
