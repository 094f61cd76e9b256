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
from pathlib import Path

DONE = ".itx-complete"
PREFIX = "tiny-random/"


def builders() -> dict[str, str]:
    """``name -> "module:function"`` for every tiny checkpoint the stage table declares
    (the name is the ``tiny-random/<name>`` ref of the backends that load it)."""
    from workers.stages import table

    return {d.refs["tiny-random"][len(PREFIX):]: d.tiny for d in table.decls() if d.tiny}


def names() -> list[str]:
    return sorted(builders())


def build(name: str, model_dir: Path, force: bool = False) -> Path:
    known = builders()
    if name not in known:
        raise ValueError(f"no tiny-random model {name!r}; known: {', '.join(sorted(known))}")
    mod, _, fn = known[name].partition(":")
    root = Path(model_dir) / "tiny-random"
    out = root / name
    if (out / DONE).exists() and not force:
        return out
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=root))
    try:
        import torch

        from workers.models.device import quiet

        quiet()
        torch.manual_seed(0)
        getattr(importlib.import_module(mod), fn)(tmp)
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
