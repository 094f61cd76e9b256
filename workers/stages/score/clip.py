"""CLIP as a score backend: L2-normalised image and text embeddings, in mini-batches.

``backend(xs, kind="image"|"text") -> list[numpy vector]`` is the stage call (one embedding
per input, so ``Backend.run`` batches it and halves a batch on GPU out-of-memory);
``score(images, texts)`` gives CLIPScores of pairs. Texts past CLIP's 77 tokens are cut.
"""
from __future__ import annotations

import numpy as np

from workers.stages.base import Backend
from workers.stages.score import clip_score


class ClipScore(Backend):
    model = None
    processor = None

    def load(self, ref: str, device: str, dtype) -> None:
        from transformers import CLIPModel, CLIPProcessor

        self.device, self.dtype = device, dtype
        self.model = CLIPModel.from_pretrained(ref, dtype=dtype).to(device).eval()
        self.processor = CLIPProcessor.from_pretrained(ref)

    @property
    def max_tokens(self) -> int:
        return int(self.model.config.text_config.max_position_embeddings)

    def __call__(self, xs: list, kind: str = "image") -> list[np.ndarray]:
        import torch

        with torch.inference_mode():
            if kind == "image":
                px = self.processor(images=[im.convert("RGB") for im in xs], return_tensors="pt")
                feats = self.model.get_image_features(
                    pixel_values=px["pixel_values"].to(self.device, self.dtype))
            elif kind == "text":
                tok = self.processor(text=[str(t) for t in xs], return_tensors="pt", padding=True,
                                     truncation=True, max_length=self.max_tokens)
                feats = self.model.get_text_features(input_ids=tok["input_ids"].to(self.device),
                                                     attention_mask=tok["attention_mask"].to(
                                                         self.device))
            else:
                raise ValueError(f"kind must be 'image' or 'text', got {kind!r}")
        if not isinstance(feats, torch.Tensor):  # transformers 5: an output with pooler_output
            feats = feats.pooler_output
        feats = feats.float()
        feats = feats / feats.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return list(feats.cpu().numpy())

    def score(self, images: list, texts: list[str]) -> list[float]:
        """CLIPScore of each (image, text) pair."""
        a, b = self.run(images, kind="image"), self.run(texts, kind="text")
        return [clip_score(cosine(x, y)) for x, y in zip(a, b, strict=True)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    """Cosine of two unit vectors (float64 dot product)."""
    return float(np.dot(a.astype(np.float64), b.astype(np.float64)))
