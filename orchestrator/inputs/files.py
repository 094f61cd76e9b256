"""Local files, folders (recursive) and references (paths, s3://, http(s)://)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.inputs.item import InputItem, is_image_name


def from_ref(ref: str, base: Path | str, **extra) -> InputItem:
    """A reference from a manifest or a table cell: URLs as they are, paths relative to
    ``base`` (a folder, or an ``s3://bucket/dir`` prefix)."""
    u = urlparse(ref)
    if u.scheme in ("s3", "http", "https"):
        return InputItem(source=ref, uri=ref, **extra)
    if u.scheme and len(u.scheme) > 1:
        return InputItem(source=ref, error=f"unknown_scheme: {u.scheme}:// is not a supported "
                         f"input (use a path, s3:// or http(s)://)", **extra)
    if isinstance(base, str) and base.startswith("s3://"):
        if ref.startswith("/") or ".." in ref.split("/"):
            return InputItem(source=ref, error=f"bad_path: {ref!r} in a table on S3 must be a "
                             f"path below the table's folder, or an s3:// URI", **extra)
        return InputItem(source=ref, uri=f"{base.rstrip('/')}/{ref}", **extra)
    p = Path(ref).expanduser()
    if not p.is_absolute():
        p = Path(base) / p
    return InputItem(source=ref, path=p, **extra)


def iter_folder(root: Path) -> Iterator[InputItem]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or not is_image_name(f):
                continue
            p = Path(dirpath) / f
            yield InputItem(source=str(p), path=p)
