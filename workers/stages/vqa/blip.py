"""Visual question answering: BLIP, each image encoded once, one ``generate`` per question length.

Each answer is the one the model card's one-image-one-question call gives, whatever other
questions share its mini-batch: questions are never padded (see ``BlipVQA.__call__``).
"""
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
        # 2. encode each image that has questions once
        asked = sorted({i for i, _ in pairs})
        pixels = self.image_processor(rgb([images[i] for i in asked]), return_tensors="pt",
                                      **self.image_kw)
        pixels = to_device(pixels, self.device, self.dtype)["pixel_values"]
        image_embeds = self.model.vision_model(pixel_values=pixels)[0]
        row = {i: k for k, i in enumerate(asked)}
        # 3. one generate per question length, so no question is padded: BLIP's answer
        # decoder attends to every question position (BlipForQuestionAnswering.generate
        # passes an all-ones mask, and the text model's cross-attention drops any mask),
        # so padding would change an answer with the other questions of its mini-batch
        # a question longer than the text encoder takes is cut at its limit, not an error
        ids = self.tokenizer([q for _, q in pairs], truncation=True,
                             max_length=self.max_question_tokens).input_ids
        by_len: dict[int, list[int]] = {}
        for k, t in enumerate(ids):
            by_len.setdefault(len(t), []).append(k)
        kw = {"max_new_tokens": self.max_new_tokens, "num_beams": self.num_beams,
              "do_sample": False, **generate_kwargs}
        for ks in by_len.values():
            rows = torch.tensor([row[pairs[k][0]] for k in ks], device=self.device)
            out = self._answer(torch.tensor([ids[k] for k in ks], device=self.device),
                               image_embeds[rows], kw)
            # 4. regroup answers per image
            for k, a in zip(ks, self.tokenizer.batch_decode(out, skip_special_tokens=True)):
                i, q = pairs[k]
                answers[i][q] = a.strip()
        return [{q: a[q] for q in dict.fromkeys(qs or [])} for a, qs in zip(answers, questions)]

    def _answer(self, input_ids: torch.Tensor, image_embeds: torch.Tensor, kw: dict):
        """``BlipForQuestionAnswering.generate`` from its image embeddings (encoded once per image)."""
        m, cfg = self.model, self.model.config.text_config

        def ones(t):
            return torch.ones(t.shape[:2], dtype=torch.long, device=t.device)

        question = m.text_encoder(input_ids=input_ids, attention_mask=ones(input_ids),
                                  encoder_hidden_states=image_embeds,
                                  encoder_attention_mask=ones(image_embeds), return_dict=False)[0]
        bos = torch.full((len(input_ids), 1), m.decoder_start_token_id, device=input_ids.device)
        return m.text_decoder.generate(input_ids=bos, eos_token_id=cfg.sep_token_id,
                                       pad_token_id=cfg.pad_token_id,
                                       encoder_hidden_states=question,
                                       encoder_attention_mask=ones(question), **kw)
