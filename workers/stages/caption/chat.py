"""Chat vision-language models (SmolVLM, Qwen2.5-VL, any ``AutoModelForImageTextToText`` with
a chat template) as captioners and as VQA backends: each (image, question) pair is one chat
turn, the whole mini-batch one left-padded ``generate``, answers free-form."""
from __future__ import annotations

from typing import ClassVar

import torch

from workers.stages.base import Backend
from workers.stages.caption.image_to_text import load_model, rgb, to_device


class ChatVLM(Backend):
    """Captions: every image is asked ``prompt`` (``--caption-prompt`` replaces it)."""

    prompt: ClassVar[str] = "Describe this image in one sentence."
    max_new_tokens: ClassVar[int] = 64

    def load(self, ref: str, device: str, dtype) -> None:
        from transformers import AutoProcessor

        self.device, self.dtype = device, dtype
        self.model = load_model(ref, device, dtype)
        self.processor = AutoProcessor.from_pretrained(ref)
        self.processor.tokenizer.padding_side = "left"  # decoder-only: continue every prompt

    def spec_kwargs(self, spec) -> dict:
        p = (spec.caption_prompt or "").strip()
        return {"prompt": p} if p and not p.startswith("<") else {}  # "<…>": a Florence task

    @torch.inference_mode()
    def ask(self, images: list, questions: list[str]) -> list[str]:
        """One answer per (image, question) pair, in one ``generate``."""
        texts = [self.processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": q}]}],
            add_generation_prompt=True) for q in questions]
        inputs = self.processor(text=texts, images=[[im] for im in rgb(images)],
                                return_tensors="pt", padding=True)
        inputs = to_device(inputs, self.device, self.dtype)
        out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return [a.strip() for a in self.processor.batch_decode(
            out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)]

    def __call__(self, images, prompt: str | None = None) -> list[str]:
        return self.ask(images, [prompt or self.prompt] * len(images))


class ChatVQA(ChatVLM):
    """VQA: returns one ``{question: answer}`` per image (a repeated question asked once)."""

    max_new_tokens = 32

    def spec_kwargs(self, spec) -> dict:
        return {}

    def __call__(self, images, questions: list[list[str]] | None = None) -> list[dict]:
        pairs = [(i, q) for i, qs in enumerate(questions or [[] for _ in images])
                 for q in dict.fromkeys(qs or [])]
        answers: list[dict[str, str]] = [{} for _ in images]
        if pairs:
            got = self.ask([images[i] for i, _ in pairs], [q for _, q in pairs])
            for (i, q), a in zip(pairs, got):
                answers[i][q] = a
        return answers
