"""Model profiles: which backends run by default, at what size and how many steps.

Which *weights* each backend loads under a profile is part of its declaration in the stage
table (``workers.stages.table``); this module only reads it. A *ref* is a hub id
(``Salesforce/blip-image-captioning-base``), a local path, ``tiny-random/<name>`` (built
locally by ``itx models tiny``) or ``builtin`` (weights ship with the package or the system,
e.g. rapidocr, tesseract).
"""
from __future__ import annotations

from workers.stages import table

PROFILES: dict[str, dict] = {
    "base": {"ocr": "easyocr", "captioners": ["blip", "git", "vit-gpt2"], "vqa": "blip-vqa",
             "generator": "sd", "size": "512x512", "steps": 25, "scorer": "clip"},
    "large": {"ocr": "easyocr", "captioners": ["blip", "git", "vit-gpt2"], "vqa": "blip-vqa",
              "generator": "sd", "size": "1024x1024", "steps": 30, "scorer": "clip"},
    # today's models, each pool sized for one 24 GB GPU: Florence-2 OCR and captions, SmolVLM
    # captions, Qwen2.5-VL 3B answers (heavy pool), FLUX.1 [schnell] (4 steps, 1024 px)
    "modern": {"ocr": "florence-2", "captioners": ["florence-2", "smolvlm"], "vqa": "qwen2.5-vl",
               "generator": "flux-schnell", "size": "1024x1024", "steps": 25,
               "scorer": "clip"},
    # small outputs and few steps: a smoke run of the whole cycle takes seconds; the size and
    # steps here win over a generator family's own (1024 px for flux would not be a smoke run)
    "tiny-random": {"ocr": "rapidocr", "captioners": ["blip", "git", "vit-gpt2"],
                    "vqa": "blip-vqa", "generator": "sd", "size": "64x64", "steps": 4,
                    "family_defaults": False, "scorer": "clip"},
}


def defaults(profile_name: str) -> dict:
    try:
        return PROFILES[profile_name]
    except KeyError:
        raise ValueError(
            f"unknown profile {profile_name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


def model_ref(stage: str, backend: str, profile_name: str) -> str:
    """The weights a backend loads under a profile; an unknown name of a stage with a
    fallback backend is itself a ref (a hub id or a local path)."""
    defaults(profile_name)
    return table.get(stage, backend).ref(profile_name)


def models(profile_name: str) -> dict[str, str]:
    """``stage:backend -> ref`` for every backend in the table, under one profile."""
    defaults(profile_name)
    return {d.key: d.ref(profile_name) for d in table.decls()}


def default_backends(profile_name: str) -> list[tuple[str, str]]:
    """(stage, backend) of what the profile runs when nothing else is asked."""
    d = defaults(profile_name)
    out = [("ocr", d["ocr"])] + [("caption", c) for c in d["captioners"]]
    return out + [("vqa", d["vqa"]), ("generate", d["generator"])]
