"""BLIP-2 visual question answering: every (image, question) pair of a mini-batch as the model
card's ``"Question: … Answer:"`` prompt, in one left-padded ``generate`` (the OPT / Flan-T5
decoder continues the prompt); captions use the captioning backend (``ImageToText``)."""
from __future__ import annotations

from typing import ClassVar

import torch

from workers.stages.base import Backend
from workers.stages.caption.image_to_text import load_model, rgb, to_device


class Blip2VQA(Backend):
    """Returns one ``{question: answer}`` per image; a repeated question is asked once."""

    template: ClassVar[str] = "Question: {q} Answer:"
    max_new_tokens: ClassVar[int] = 20

    def load(self, ref: str, device: str, dtype) -> None:
        from transformers import AutoProcessor, Blip2ForConditionalGeneration

        self.device, self.dtype = device, dtype
        self.model = load_model(ref, device, dtype, auto_cls=Blip2ForConditionalGeneration)
        self.processor = AutoProcessor.from_pretrained(ref)
        self.decoder_only = not self.model.config.text_config.is_encoder_decoder
        if self.decoder_only:  # OPT continues each prompt: pad on the left
            self.processor.tokenizer.padding_side = "left"

    @torch.inference_mode()
    def __call__(self, images, questions: list[list[str]] | None = None) -> list[dict]:
        pairs = [(i, q) for i, qs in enumerate(questions or [[] for _ in images])
                 for q in dict.fromkeys(qs or [])]
        answers: list[dict[str, str]] = [{} for _ in images]
        if not pairs:
            return answers
        imgs = rgb([images[i] for i, _ in pairs])
        inputs = self.processor(images=imgs, text=[self.template.format(q=q) for _, q in pairs],
                                padding=True, return_tensors="pt")
        inputs = to_device(inputs, self.device, self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        if self.decoder_only:  # the output starts with the prompt: drop it
            out = out[:, inputs["input_ids"].shape[1]:]
        for (i, q), a in zip(pairs, self.processor.batch_decode(out, skip_special_tokens=True)):
            answers[i][q] = a.strip()
        return answers
