"""Input sources -> items: files, folders (recursive), globs, JSONL/CSV manifests,
``s3://`` prefixes, ``http(s)://`` URLs, COCO annotation files, WebDataset tar shards
(paths, globs, brace ranges ``shards/{000..099}.tar``, ``s3://``) and Parquet tables.

One module a source kind; all yield items lazily, so a million-line manifest or a thousand
shards never sit in memory. A source that cannot be read becomes an item with an ``error``,
never an exception.
"""
from __future__ import annotations

import glob
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

from orchestrator.inputs.files import from_ref, iter_folder
from orchestrator.inputs.item import InputItem, is_image_name
from orchestrator.inputs.manifest import iter_manifest, listish
from orchestrator.inputs.parquet import DEFAULT_KEEP, is_table_name, iter_table
from orchestrator.inputs.s3 import iter_s3_prefix
from orchestrator.inputs.webdataset import is_shard_name, iter_shard

__all__ = ["InputItem", "iter_inputs", "is_image_name", "is_dataset_ref", "DEFAULT_KEEP",
           "iter_manifest", "iter_folder", "iter_s3_prefix", "iter_shard", "iter_table",
           "expand_braces"]

# the old single-module names, for code that imported them
_listish, _from_ref = listish, from_ref


def expand_braces(ref: str) -> list[str]:
    """``{000..099}`` ranges and ``{a,b}`` lists, as the ``webdataset`` library expands shard
    URLs (with the ``braceexpand`` package)."""
    if "{" not in ref or "}" not in ref:
        return [ref]
    from braceexpand import braceexpand

    try:
        return list(braceexpand(ref))
    except Exception:  # an unbalanced brace: take the name as it is
        return [ref]


def is_dataset_ref(ref: str) -> bool:
    """A shard, a table or a brace range of them (reading it reads the images)."""
    return any(is_shard_name(r) or is_table_name(r) for r in expand_braces(str(ref)))


def iter_inputs(inputs: Iterable[str], *, coco: str | None = None, images: str | None = None,
                limit: int | None = None, ids: list[int] | None = None,
                image_column: str | None = None,
                keep_columns: list[str] | None = None) -> Iterator[InputItem]:
    """Every item of ``inputs`` in order. ``image_column``/``keep_columns`` apply to Parquet
    tables (see ``orchestrator.inputs.parquet``)."""
    n = 0

    def dataset(ref: str) -> Iterator[InputItem] | None:
        name = urlparse(ref).path if ref.startswith("s3://") else ref
        if is_shard_name(name):
            return iter_shard(ref)
        if is_table_name(name):
            return iter_table(ref, image_column=image_column, keep_columns=keep_columns)
        return None

    def one(ref: str) -> Iterator[InputItem]:
        u = urlparse(ref)
        if u.scheme == "s3":
            if (sub := dataset(ref)) is not None:
                yield from sub
            elif ref.endswith("/") or not is_image_name(ref):
                yield from iter_s3_prefix(ref, dataset)
            else:
                yield InputItem(source=ref, uri=ref)
            return
        if u.scheme in ("http", "https"):
            yield InputItem(source=ref, uri=ref)
            return
        if u.scheme and len(u.scheme) > 1:
            yield from_ref(ref, Path("."))
            return
        p = Path(ref).expanduser()
        if p.is_dir():
            yield from iter_folder(p)
        elif p.suffix.lower() in (".jsonl", ".csv") and (p.is_file() or p.is_fifo()):
            yield from iter_manifest(p)
        elif (p.exists() or p.is_symlink()) and (sub := dataset(ref)) is not None:
            yield from sub
        elif p.exists() or p.is_symlink():
            yield InputItem(source=ref, path=p)
        elif any(ch in ref for ch in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(ref), recursive=True))
            if not matches:
                yield InputItem(source=ref, error=f"not_found: no file matches {ref!r}")
            for m in matches:
                mp = Path(m)
                if mp.is_file():
                    sub = dataset(m)
                    yield from (sub if sub is not None else [InputItem(source=m, path=mp)])
        else:
            yield InputItem(source=ref, error=f"not_found: no such file or folder {ref!r}")

    def gen() -> Iterator[InputItem]:
        if coco:
            from orchestrator.coco import COCODataset

            ds = COCODataset(coco, images or str(Path(coco).parent), ids=ids, limit=limit,
                             decode=False)
            for it in ds.iter_items():
                src = it["source"]
                yield from_ref(src, Path("."), coco_id=it["coco_id"], file_name=it["file_name"])
        for ref in inputs:
            ref = str(ref)
            expanded = [ref] if Path(ref).expanduser().exists() else expand_braces(ref)
            for r in expanded:
                yield from one(r)

    for item in gen():
        if limit is not None and not coco and n >= limit:
            return
        n += 1
        yield item
