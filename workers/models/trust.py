"""Trusted models only: which weights a worker may load is the operator's choice, not the
submitter's (docs/security.md).

- ``check_allowed(ref)``: the ref is in ``ITX_ALLOWED_MODELS`` (exact refs, or prefixes ending
  in ``/`` or ``*``; default: every ref of every profile; ``tiny-random/`` and ``builtin``
  always), or a local path inside ``ITX_MODEL_DIR`` or one of the operator's
  ``ITX_MODEL_ROOTS``. A ref never resolves relative to the current directory.
- ``check_weights(path)``: a resolved model directory holds no pickled weights (``.bin``,
  ``.pt``, ``.ckpt``, ``.pkl``) that would load in place of safetensors, unless the operator
  opts in with ``ITX_ALLOW_PICKLE=true``. ``.pth`` files are EasyOCR's state dicts, which the
  OCR backend reads with ``torch.load(weights_only=True)`` (``check_torch_file``).
- ``use_safetensors()``: the keyword every ``from_pretrained`` gets (True; None with the opt-in).
- ``split_revision(ref)``: ``org/name@REVISION`` -> (``org/name``, ``REVISION``).

Importing this module imports no torch.
"""
from __future__ import annotations

import os
from pathlib import Path

from workers.settings import get_settings

ALWAYS = ("tiny-random/", "builtin")
PICKLE_SUFFIXES = (".bin", ".pt", ".ckpt", ".pkl", ".pickle")


class ModelNotAllowedError(ValueError):
    """A ref outside what the operator allows; the message names it and the setting."""


def split_revision(ref: str) -> tuple[str, str | None]:
    """``org/name@v1.2`` -> (``org/name``, ``v1.2``); a ref without ``@`` has no revision."""
    if "@" in ref and not ref.startswith(("/", "~")):
        base, rev = ref.rsplit("@", 1)
        if base and rev:
            return base, rev
    return ref, None


def default_allowed() -> list[str]:
    from workers.models.profiles import PROFILES, models

    refs = {ref for p in PROFILES for ref in models(p).values()}
    return sorted(refs | set(ALWAYS))


def allowed() -> list[str]:
    raw = get_settings().allowed_models.strip()
    if not raw:
        return default_allowed()
    return [*ALWAYS, *(x.strip() for x in raw.split(",") if x.strip())]


def roots() -> list[Path]:
    s = get_settings()
    extra = [Path(x.strip()).expanduser() for x in s.model_roots.split(",") if x.strip()]
    return [Path(s.model_dir).expanduser(), *extra]


def _matches(ref: str, entry: str) -> bool:
    if entry.endswith("*"):
        return ref.startswith(entry[:-1])
    if entry.endswith("/"):
        return ref.startswith(entry)
    return ref == entry or split_revision(ref)[0] == entry  # allowing a repo allows its revisions


def is_local(ref: str) -> bool:
    """A ref that names a path on this machine rather than a hub id."""
    return ref.startswith(("/", "~", "./", "../", "file:")) or ref in (".", "..") or "\\" in ref


def _inside(path: Path, root: Path) -> bool:
    try:
        path.resolve().relative_to(root.resolve())
        return True
    except (ValueError, OSError):
        return False


def check_allowed(ref: str, extra_roots=()) -> None:
    """Raise ``ModelNotAllowedError`` unless the operator allows ``ref``."""
    if not ref or not isinstance(ref, str):
        raise ModelNotAllowedError("an empty model ref is not allowed")
    if is_local(ref):
        if not ref.startswith(("/", "~")):
            raise ModelNotAllowedError(
                f"model {ref!r}: a relative path is never resolved against the current "
                f"directory; name a directory inside ITX_MODEL_DIR or ITX_MODEL_ROOTS by its "
                f"absolute path")
        path = Path(ref).expanduser()
        if not any(_inside(path, Path(r)) for r in [*roots(), *extra_roots]):
            raise ModelNotAllowedError(
                f"model {ref!r} is outside the directories the operator allows "
                f"(ITX_MODEL_DIR and ITX_MODEL_ROOTS)")
        return
    parts = split_revision(ref)[0].split("/")
    if ".." in parts or "." in parts:
        raise ModelNotAllowedError(f"model {ref!r}: '..' and '.' are not allowed in a ref")
    if not any(_matches(ref, e) for e in allowed()):
        raise ModelNotAllowedError(
            f"model {ref!r} is not allowed on these workers (ITX_ALLOWED_MODELS: the "
            f"operator's list of refs and prefixes; default: the profiles' models)")


def check_spec(spec) -> list[tuple[str, str, str]]:
    """Every model a resolved PipelineSpec would load is allowed (for ``itx submit``, which
    needs no weights itself); returns what ``needed_models`` returns."""
    from workers.models.loader import needed_models

    need = needed_models(spec)
    for _stage, _name, ref in need:
        check_allowed(ref)
    return need


def use_safetensors() -> bool | None:
    """``use_safetensors=`` for ``from_pretrained``: only safetensors load, unless the operator
    set ITX_ALLOW_PICKLE=true (then the libraries' default: safetensors first, else pickle)."""
    return None if get_settings().allow_pickle else True


def check_weights(path: str | Path) -> None:
    """Refuse a model directory whose folders hold pickled weights and no safetensors (what
    ``from_pretrained`` would then unpickle), unless ITX_ALLOW_PICKLE=true."""
    if get_settings().allow_pickle:
        return
    path = Path(path)
    if not path.is_dir():
        return
    for dirpath, _dirs, files in os.walk(path):
        pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
        if pickles and not any(f.endswith(".safetensors") for f in files):
            rel = Path(dirpath).relative_to(path) / pickles[0]
            raise ModelNotAllowedError(
                f"model at {path} has pickled weights ({rel}) and no safetensors: pickles can "
                f"run code when loaded. Convert them to safetensors, or set "
                f"ITX_ALLOW_PICKLE=true if you trust them")


def check_torch_file(path: str | Path) -> None:
    """A ``.pth`` state dict loads with ``torch.load(weights_only=True)``: tensors and plain
    containers only, no code. Call it before a library that loads the same file without
    ``weights_only`` (EasyOCR's recogniser)."""
    if get_settings().allow_pickle:
        return
    import torch

    try:
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ModelNotAllowedError(
            f"{path} is not a plain state dict (torch.load(weights_only=True) refused it: "
            f"{type(e).__name__}); set ITX_ALLOW_PICKLE=true if you trust it") from None
