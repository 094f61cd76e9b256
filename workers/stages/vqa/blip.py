"""Visual question answering: BLIP, every (image, question) pair of a mini-batch in one ``generate``."""
from __future__ import annotations

from typing import ClassVar

import torch
from PIL import Image

from workers.stages.base import Backend
from workers.stages.caption.image_to_text import (image_kwargs, load_model, load_processing, rgb,
                                                 to_device)


class BlipVQA(Backend):
    """Answers each image's own questions; returns one ``{question: answer}`` per image."""

    max_new_tokens: ClassVar[int] = 10  # answers are a few words
    num_beams: ClassVar[int] = 1

    def load(self, ref: str, device: str, dtype) -> None:
        from transformers import BlipForQuestionAnswering

        self.device, self.dtype = device, dtype
        self.model = load_model(ref, device, dtype, auto_cls=BlipForQuestionAnswering)
        _, self.image_processor, self.tokenizer = load_processing(ref)
        self.image_kw = image_kwargs(self.image_processor, device)
        positions = getattr(getattr(self.model.config, "text_config", None),
                            "max_position_embeddings", None) or 512
        self.max_question_tokens = min(int(self.tokenizer.model_max_length or positions), positions)

    @torch.inference_mode()
    def __call__(self, images: list[Image.Image], questions: list[list[str]] | None = None,
                 **generate_kwargs) -> list[dict[str, str]]:
        questions = questions or [[] for _ in images]
        # 1. flatten to (image index, question) pairs; a repeated question is asked once
        pairs = [(i, q) for i, qs in enumerate(questions) for q in dict.fromkeys(qs or [])]
        answers: list[dict[str, str]] = [{} for _ in images]
        if not pairs:
            return answers
        # 2. preprocess each image once, each question once per pair
        pixels = self.image_processor(rgb(images), return_tensors="pt", **self.image_kw)
        pixels = to_device(pixels, self.device, self.dtype)["pixel_values"]
        idx = torch.tensor([i for i, _ in pairs], device=self.device)
        # a question longer than the text encoder takes is cut at its limit, not an error
        text = self.tokenizer([q for _, q in pairs], padding=True, truncation=True,
                              max_length=self.max_question_tokens, return_tensors="pt")
        # 3. one generate call for every pair
        kw = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
              "do_sample": False, **generate_kwargs}
        out = self.model.generate(input_ids=text.input_ids.to(self.device),
                                  attention_mask=text.attention_mask.to(self.device),
                                  pixel_values=pixels[idx], **kw)
        # 4. regroup answers per image
        for (i, q), a in zip(pairs, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
            answers[i][q] = a.strip()
        return answers
