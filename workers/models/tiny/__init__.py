"""Deterministic tiny-random checkpoints: every architecture itx uses, a few MB in all.

``build(name, model_dir)`` writes ``model_dir/tiny-random/<name>`` with the model's own
``save_pretrained`` (fixed seed), so backends load it through the same ``from_pretrained``
path as real weights. Builds are atomic (temp dir + rename), so concurrent worker
processes can race to build the same model safely.
"""
from __future__ import annotations

import importlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

_BUILDERS: dict[str, Callable[[Path], None]] = {}
_MODULES = ("captioning", "diffusion", "ocr")
DONE = ".itx-complete"


def tiny(name: str):
    """Register a builder: ``fn(out_dir)`` writes a checkpoint into ``out_dir``."""
    def deco(fn):
        _BUILDERS[name] = fn
        return fn
    return deco


def _load() -> None:
    for m in _MODULES:
        importlib.import_module(f"workers.models.tiny.{m}")


def names() -> list[str]:
    _load()
    return sorted(_BUILDERS)


def build(name: str, model_dir: Path, force: bool = False) -> Path:
    _load()
    if name not in _BUILDERS:
        raise ValueError(f"no tiny-random model {name!r}; known: {', '.join(sorted(_BUILDERS))}")
    root = Path(model_dir) / "tiny-random"
    out = root / name
    if (out / DONE).exists() and not force:
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        import torch

        from workers.models.cache import quiet

        quiet()
        torch.manual_seed(0)
        _BUILDERS[name](tmp)
        (tmp / DONE).write_text("tiny-random, seed 0\n")
        if force and out.exists():
            shutil.rmtree(out)
        try:
            os.rename(tmp, out)
        except OSError:  # another process finished first
            if not (out / DONE).exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out


def build_all(model_dir: Path, force: bool = False) -> list[Path]:
    return [build(n, model_dir, force=force) for n in names()]
