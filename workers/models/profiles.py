"""Model profiles: which weights each stage backend loads.

A *ref* is a hub id (``Salesforce/blip-image-captioning-base``), a local path,
``tiny-random/<name>`` (built locally by ``itx models tiny``) or ``builtin``
(weights ship with the package or the system, e.g. rapidocr, tesseract).
Keys are ``<stage>:<backend>``.
"""
from __future__ import annotations

PROFILES: dict[str, dict] = {
    "base": {
        "defaults": {"ocr": "easyocr", "captioners": ["blip", "git", "vit-gpt2"], "generator": "sd",
                     "size": "512x512", "steps": 25},
        "models": {
            "ocr:easyocr": "easyocr/en",
            "ocr:rapidocr": "builtin",
            "ocr:tesseract": "builtin",
            "caption:blip": "Salesforce/blip-image-captioning-base",
            "caption:git": "microsoft/git-base-coco",
            "caption:vit-gpt2": "nlpconnect/vit-gpt2-image-captioning",
            "vqa:blip-vqa": "Salesforce/blip-vqa-base",
            "generate:sd": "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "generate:sd-img2img": "stable-diffusion-v1-5/stable-diffusion-v1-5",
            "generate:if": "DeepFloyd/IF-I-M-v1.0",
        },
    },
    "large": {
        "defaults": {"ocr": "easyocr", "captioners": ["blip", "git", "vit-gpt2"], "generator": "sd",
                     "size": "1024x1024", "steps": 30},
        "models": {
            "ocr:easyocr": "easyocr/en",
            "ocr:rapidocr": "builtin",
            "ocr:tesseract": "builtin",
            "caption:blip": "Salesforce/blip-image-captioning-large",
            "caption:git": "microsoft/git-large-coco",
            "caption:vit-gpt2": "nlpconnect/vit-gpt2-image-captioning",
            "vqa:blip-vqa": "Salesforce/blip-vqa-capfilt-large",
            "generate:sd": "stabilityai/stable-diffusion-xl-base-1.0",
            "generate:sd-img2img": "stabilityai/stable-diffusion-xl-base-1.0",
            "generate:if": "DeepFloyd/IF-I-XL-v1.0",
        },
    },
    "tiny-random": {
        # small outputs and few steps: a smoke run of the whole cycle takes seconds
        "defaults": {"ocr": "rapidocr", "captioners": ["blip", "git", "vit-gpt2"], "generator": "sd",
                     "size": "64x64", "steps": 4},
        "models": {
            "ocr:easyocr": "tiny-random/easyocr",
            "ocr:rapidocr": "builtin",
            "ocr:tesseract": "builtin",
            "caption:blip": "tiny-random/blip",
            "caption:git": "tiny-random/git",
            "caption:vit-gpt2": "tiny-random/vit-gpt2",
            "vqa:blip-vqa": "tiny-random/blip-vqa",
            "generate:sd": "tiny-random/sd",
            "generate:sd-img2img": "tiny-random/sd",
            "generate:if": "tiny-random/if",
        },
    },
}


def profile(name: str) -> dict:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(
            f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}"
        ) from None


def model_ref(stage: str, backend: str, profile_name: str) -> str:
    """The weights a backend loads under a profile; an unknown backend name is itself a ref
    (a hub id or a local path, e.g. any Hugging Face image-to-text model)."""
    return profile(profile_name)["models"].get(f"{stage}:{backend}", backend)


def defaults(profile_name: str) -> dict:
    return profile(profile_name)["defaults"]
