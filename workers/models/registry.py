"""The registry of stage backends: ``(stage, name) -> class``.

Adding a model means one class in one file plus one ``@register`` line.
Stage modules are imported lazily, so importing the registry costs nothing.
"""
from __future__ import annotations

import importlib

STAGES = ("ocr", "caption", "vqa", "generate")
_BACKENDS: dict[tuple[str, str], type] = {}
# a stage may name a fallback backend for names it does not know (e.g. any HF captioning id)
_FALLBACK: dict[str, type] = {}


def register(stage: str, *names: str, fallback: bool = False):
    def deco(cls):
        cls.stage = stage
        if not getattr(cls, "name", None):
            cls.name = names[0] if names else cls.__name__.lower()
        for n in names:
            _BACKENDS[(stage, n)] = cls
        if fallback:
            _FALLBACK[stage] = cls
        return cls

    return deco


def _import_stage(stage: str) -> None:
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}; stages are {', '.join(STAGES)}")
    importlib.import_module(f"workers.stages.{stage}")


def get_backend_class(stage: str, name: str) -> type:
    _import_stage(stage)
    cls = _BACKENDS.get((stage, name))
    if cls is None:
        if stage in _FALLBACK and ("/" in name or "\\" in name):
            return _FALLBACK[stage]
        raise ValueError(
            f"unknown {stage} backend {name!r}; choose one of {', '.join(available(stage))}"
            + (" or a Hugging Face model id / local path" if stage in _FALLBACK else "")
        )
    return cls


def available(stage: str) -> list[str]:
    _import_stage(stage)
    return sorted(n for (s, n) in _BACKENDS if s == stage)
