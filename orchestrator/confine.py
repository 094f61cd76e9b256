"""Where a manifest may send the orchestrator: its reads are confined.

A manifest row is data from someone else; the orchestrator copies what it names into the shared
store with its own rights. So a local path in a manifest must resolve (``..`` and symlinks
followed) inside the manifest's own folder or a root the user names (``--input-root``,
``ITX_INPUT_ROOTS``); an ``s3://`` object outside the store's bucket must be in a bucket the
operator allows (``ITX_INPUT_BUCKETS``). Each refusal is an ``outside_roots`` or
``disallowed_bucket`` error record; nothing is read.
"""
from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.inputs.http import InputError
from workers.settings import get_settings


def roots(manifest_dir: Path | None) -> list[Path]:
    out = [Path(os.path.realpath(r)) for r in get_settings().input_roots]
    if manifest_dir is not None:
        out.append(Path(os.path.realpath(manifest_dir)))
    return out


def check_path(path: Path, manifest_dir: Path | None) -> None:
    """A path a manifest names must resolve inside its folder or an input root."""
    if manifest_dir is None:  # named on the command line by the user: theirs to read
        return
    real = Path(os.path.realpath(path))
    allowed = roots(manifest_dir)
    if not any(real == r or r in real.parents for r in allowed):
        raise InputError("outside_roots", f"{str(path)[:200]!r} resolves outside the manifest's "
                         f"folder and the input roots (--input-root, ITX_INPUT_ROOTS)")


def check_bucket(uri: str, store_bucket: str | None) -> None:
    """An s3:// input outside the store: only from a bucket in ITX_INPUT_BUCKETS."""
    bucket = urlparse(uri).netloc
    if bucket == store_bucket or bucket in get_settings().input_buckets:
        return
    raise InputError("disallowed_bucket", f"bucket {bucket!r} is not the store's and not in "
                     f"ITX_INPUT_BUCKETS")
