"""Input sources -> items: files, folders (recursive), globs, JSONL/CSV manifests,
``s3://`` prefixes, ``http(s)://`` URLs and COCO annotation files.

Items are yielded lazily, so a million-line manifest never sits in memory.
A source that cannot be read becomes an item with an ``error``, never an exception.
"""
from __future__ import annotations

import csv
import glob
import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

from workers.images import EXTENSIONS


@dataclass
class InputItem:
    source: str                      # as the user named it
    path: Path | None = None         # a local file to upload
    uri: str | None = None           # an object already in some store (s3://) or a URL
    questions: list[str] = field(default_factory=list)
    edit: list[str] = field(default_factory=list)
    coco_id: int | None = None
    file_name: str | None = None
    error: str | None = None
    manifest_dir: Path | None = None  # the manifest that named it: reads confined (confine.py)


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in EXTENSIONS


def _listish(v) -> list[str]:
    """A manifest cell: a JSON list, a '|'-separated string, or empty."""
    if v is None or v == "":
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x) for x in json.loads(s)]
        except json.JSONDecodeError:
            pass
    return [p.strip() for p in s.split("|") if p.strip()]


def _from_ref(ref: str, base: Path, **extra) -> InputItem:
    u = urlparse(ref)
    if u.scheme in ("s3", "http", "https"):
        return InputItem(source=ref, uri=ref, **extra)
    if u.scheme and len(u.scheme) > 1:
        return InputItem(source=ref, error=f"unknown_scheme: {u.scheme}:// is not a supported "
                         f"input (use a path, s3:// or http(s)://)", **extra)
    p = Path(ref).expanduser()
    if not p.is_absolute():
        p = base / p
    return InputItem(source=ref, path=p, **extra)


def iter_manifest(path: Path) -> Iterator[InputItem]:
    """JSONL (one object a line) or CSV with a header; column ``image`` required,
    ``questions`` and ``edit`` optional. Relative paths are relative to the manifest."""
    base = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "image" not in (reader.fieldnames or []):
                yield InputItem(source=str(path), error="bad_manifest: CSV has no 'image' column")
                return
            for n, row in enumerate(reader, 2):
                if not row.get("image"):
                    yield InputItem(source=f"{path}:{n}", error="bad_manifest: empty 'image' cell")
                    continue
                yield _from_ref(row["image"], base, questions=_listish(row.get("questions")),
                                edit=_listish(row.get("edit")), manifest_dir=base)
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ref = row["image"]
                if not isinstance(ref, str) or not ref.strip():
                    raise TypeError(ref)
            except (json.JSONDecodeError, KeyError, TypeError):
                yield InputItem(source=f"{path}:{n}",
                                error="bad_manifest: line is not a JSON object with an 'image' key")
                continue
            yield _from_ref(str(ref), base, questions=_listish(row.get("questions")),
                            edit=_listish(row.get("edit")),
                            coco_id=row.get("coco_id"), manifest_dir=base)


def iter_folder(root: Path) -> Iterator[InputItem]:
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith(".") or not is_image_name(f):
                continue
            p = Path(dirpath) / f
            yield InputItem(source=str(p), path=p)


def iter_s3_prefix(uri: str) -> Iterator[InputItem]:
    from workers.storage import S3Store, StoreError

    u = urlparse(uri)
    st = S3Store(f"s3://{u.netloc}")
    try:
        for key in st.list(u.path.lstrip("/")):
            if is_image_name(key):
                yield InputItem(source=f"s3://{u.netloc}/{key}", uri=f"s3://{u.netloc}/{key}")
    except StoreError as e:
        yield InputItem(source=uri, error=f"store_error: cannot list {uri}: {e}")


def iter_inputs(inputs: Iterable[str], *, coco: str | None = None, images: str | None = None,
                limit: int | None = None, ids: list[int] | None = None) -> Iterator[InputItem]:
    n = 0

    def gen() -> Iterator[InputItem]:
        if coco:
            from orchestrator.coco import COCODataset

            ds = COCODataset(coco, images or str(Path(coco).parent), ids=ids, limit=limit,
                             decode=False)
            for it in ds.iter_items():
                src = it["source"]
                yield _from_ref(src, Path("."), coco_id=it["coco_id"], file_name=it["file_name"])
        for ref in inputs:
            u = urlparse(ref)
            if u.scheme == "s3":
                if ref.endswith("/") or not is_image_name(ref):
                    yield from iter_s3_prefix(ref)
                else:
                    yield InputItem(source=ref, uri=ref)
                continue
            if u.scheme in ("http", "https"):
                yield InputItem(source=ref, uri=ref)
                continue
            if u.scheme and len(u.scheme) > 1:
                yield _from_ref(ref, Path("."))
                continue
            p = Path(ref).expanduser()
            if p.is_dir():
                yield from iter_folder(p)
            elif p.suffix.lower() in (".jsonl", ".csv") and (p.is_file() or p.is_fifo()):
                yield from iter_manifest(p)
            elif p.exists() or p.is_symlink():
                yield InputItem(source=ref, path=p)
            elif any(ch in ref for ch in "*?["):
                matches = sorted(glob.glob(os.path.expanduser(ref), recursive=True))
                if not matches:
                    yield InputItem(source=ref, error=f"not_found: no file matches {ref!r}")
                for m in matches:
                    mp = Path(m)
                    if mp.is_file():
                        yield InputItem(source=m, path=mp)
            else:
                yield InputItem(source=ref, error=f"not_found: no such file or folder {ref!r}")

    for item in gen():
        if limit is not None and not coco and n >= limit:
            return
        n += 1
        yield item
