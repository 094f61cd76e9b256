"""Score: reference-free quality numbers for every record.

``clip:caption:<captioner>`` and ``clip:prompt`` are CLIPScores of a text against the source
image, ``clip:output:<k>`` the CLIPScore of the prompt against generated image ``k``
(Hessel et al. 2021, "CLIPScore": ``2.5 * max(cos, 0)``, in [0, 2.5]); ``clip-i:output:<k>``
is the cosine of the source's and output ``k``'s CLIP image embeddings (round-trip fidelity,
in [-1, 1]); ``ocr-readback:output:<k>`` is ``1 - normalised edit distance`` between the
source's OCR text and the OCR text of output ``k`` (in [0, 1]).

This module is light (no torch): the key names and the arithmetic, shared by the workers,
``itx eval`` and ``itx report``. The CLIP backend is :mod:`workers.stages.score.clip`.
"""
from __future__ import annotations

import re

W = 2.5  # CLIPScore's weight (Hessel et al. 2021)
DIGITS = 4  # scores are rounded to this many decimals in records
BEST = "best"  # caption_for_prompt: the caption with the highest CLIPScore


def clip_score(cos: float) -> float:
    return round(W * max(float(cos), 0.0), DIGITS)


def caption_key(captioner: str) -> str:
    return f"clip:caption:{captioner}"


PROMPT_KEY = "clip:prompt"


def output_key(kind: str, k: int) -> str:
    """``clip``, ``clip-i``, ``ocr-readback`` or ``nsfw`` (a flag) of output ``k``."""
    return f"{kind}:output:{k}"


def family(key: str) -> str:
    """A score's family across outputs: ``clip-i:output:3`` -> ``clip-i:output``."""
    head, sep, tail = key.rpartition(":")
    return head if sep and tail.isdigit() and head.endswith(":output") else key


def _norm(text: str) -> str:
    return re.sub(r"\s+", " ", text or "").strip().lower()


def readback(source: str, output: str) -> float:
    """1 - normalised Levenshtein distance of two OCR texts (case and runs of whitespace
    ignored): 1.0 when the text survived the round trip, 0.0 when nothing of it did."""
    from rapidfuzz.distance import Levenshtein

    return round(1.0 - Levenshtein.normalized_distance(_norm(source), _norm(output)), DIGITS)


def best_caption(scores: dict[str, float], captioners: list[str]) -> str | None:
    """The captioner whose caption scored highest (the first of equals, in ``captioners``
    order); None when none was scored."""
    scored = [c for c in captioners if caption_key(c) in scores]
    return max(scored, key=lambda c: scores[caption_key(c)]) if scored else None
