"""Export a batch (or a manifest) for training: WebDataset tar shards, Parquet, JSON Lines.

    export("b1", "webdataset", "out/")                 out/shard-000000.tar, …
    export("manifest.jsonl", "parquet", "s3://bucket/ds/", where="error==null")

WebDataset: one sample per record, ``<key>.jpg|png|…`` the source image (its stored bytes,
not re-encoded), ``<key>.<k>.png`` the k-th generated image, ``<key>.json`` the record,
``<key>.txt`` the prompt. ``<key>`` is the record's ``meta.key`` when it has one (dataset
inputs), else its id. Parquet: one row per record, nested fields kept as structs and lists.
JSON Lines: the records, one per line.

Streaming: records are read a window at a time and each shard is written to a temporary
file, then moved (or uploaded) into place, so memory stays flat however many records there
are (one shard's Parquet rows at most, ``shard_size`` records).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote, urlparse

from orchestrator.where import compile_where

FORMATS = ("webdataset", "parquet", "jsonl")
_EXT = {"webdataset": "tar", "parquet": "parquet", "jsonl": "jsonl"}


class ExportError(ValueError):
    """Bad arguments or an unreadable source."""


# --- reading records ---------------------------------------------------------------------------
def _window_map(fn, items: Iterable, window: int = 64, threads: int = 16) -> Iterator:
    """``map(fn, items)`` in threads with at most ``window`` in flight, in order."""
    from collections import deque

    with ThreadPoolExecutor(max_workers=threads) as pool:
        q: deque = deque()
        for it in items:
            q.append(pool.submit(fn, it))
            if len(q) >= window:
                yield q.popleft().result()
        while q:
            yield q.popleft().result()


def records_of(source: str, store=None) -> tuple[Iterator[dict], Path | None]:
    """Records of a manifest file (``.jsonl``) or of a batch in the store, streamed; and the
    folder relative image paths of a manifest are read from."""
    p = Path(source[7:] if source.startswith("file://") else source)
    if p.is_file():
        def lines():
            with p.open(encoding="utf-8") as f:
                for n, line in enumerate(f, 1):
                    if line.strip():
                        try:
                            yield json.loads(line)
                        except json.JSONDecodeError as e:
                            raise ExportError(f"{p}:{n}: not JSON: {e}") from None
        return lines(), p.parent
    from orchestrator.batch import Batch, BatchError

    b = Batch(source, store)
    try:
        b.meta()
    except BatchError as e:
        raise ExportError(f"{source!r} is neither a manifest file nor a batch: {e}") from None
    done = b.result_ids()
    ids = [i for i in b.submitted_ids() if i in done]
    return _window_map(lambda i: b.record(i).dump(), ids), None


def read_uri(uri: str, base: Path | None = None) -> bytes:
    """Bytes of an image a record names: ``s3://``, ``file://``, or a path (relative to the
    manifest's folder)."""
    from workers.storage import open_store

    u = urlparse(uri)
    if u.scheme == "s3":
        return open_store(f"s3://{u.netloc}").get(u.path.lstrip("/"))
    if u.scheme == "file":
        return Path(unquote(u.path)).read_bytes()
    p = Path(uri)
    return (p if p.is_absolute() or base is None else base / p).read_bytes()


# --- writing shards ------------------------------------------------------------------------------
class _Out:
    """A destination folder: local, or an s3:// prefix (shards are uploaded when closed)."""

    def __init__(self, out: str):
        self.out = str(out)
        u = urlparse(self.out)
        self.s3 = u.scheme == "s3"
        if self.s3:
            from workers.storage import S3Store

            self.store = S3Store(f"s3://{u.netloc}")
            self.prefix = u.path.strip("/")
        else:
            self.dir = Path(unquote(u.path) if u.scheme == "file" else self.out)
            self.dir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="itx-export-"))
        self.written: list[str] = []

    def local(self, name: str) -> Path:
        return self.tmp / name

    def commit(self, name: str) -> str:
        src = self.tmp / name
        if self.s3:
            key = f"{self.prefix}/{name}" if self.prefix else name
            self.store.client.upload_file(str(src), self.store.bucket, key)  # multipart, streamed
            src.unlink()
            dest = f"s3://{self.store.bucket}/{key}"
        else:
            dest = str(self.dir / name)
            shutil.move(str(src), dest)
        self.written.append(dest)
        return dest

    def close(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


_KEY_BAD = re.compile(r"[^A-Za-z0-9_\-]")


def sample_key(rec: dict) -> str:
    """The sample's key: ``meta.key`` (dataset inputs) or the id. WebDataset splits a key from
    its extensions at the first dot, so dots and other odd characters become ``_``."""
    meta = rec.get("meta") if isinstance(rec.get("meta"), dict) else {}
    key = str(meta.get("key") or rec["id"])
    return _KEY_BAD.sub("_", key)


def _ext(uri: str) -> str:
    ext = Path(urlparse(uri).path).suffix.lower().lstrip(".") or "bin"
    return {"jpeg": "jpg", "tif": "tiff"}.get(ext, ext)


def _sample(rec: dict, base: Path | None) -> dict:
    s = {"__key__": sample_key(rec), "json": json.dumps(rec, ensure_ascii=False).encode()}
    if rec.get("prompt") is not None:
        s["txt"] = rec["prompt"].encode()
    if rec.get("image"):
        try:
            s[_ext(rec["image"])] = read_uri(rec["image"], base)
        except Exception:
            pass  # a source that is gone: the sample goes without it (the record says where)
    for k, uri in enumerate(rec.get("outputs") or []):
        if uri:
            try:
                s[f"{k}.png"] = read_uri(uri, base)
            except Exception as e:  # a training set must not silently lose a target image
                raise ExportError(f"record {rec['id']}: cannot read output {uri}: {e}") from None
    return s


def _drop_empty(v):
    """Parquet cannot hold a struct without fields: empty dicts become null."""
    if isinstance(v, dict):
        return {k: _drop_empty(x) for k, x in v.items()} or None
    if isinstance(v, list):
        return [_drop_empty(x) for x in v]
    return v


def export(source: str, format: str, out: str, *, shard_size: int = 10_000,
           where: str | None = None, store=None,
           on_record: Callable[[int], None] | None = None) -> dict:
    """Write the records of ``source`` (a batch name or a manifest file) that match ``where``
    to ``out`` (a folder or ``s3://bucket/prefix``) in ``format``, ``shard_size`` records
    per shard. Returns ``{"records", "shards", "files"}``."""
    if format not in FORMATS:
        raise ExportError(f"--format {format!r}: choose one of {', '.join(FORMATS)}")
    if shard_size < 1:
        raise ExportError("--shard-size must be at least 1")
    keep = compile_where(where)
    recs, base = records_of(source, store)
    dest = _Out(out)
    n = shard = in_shard = 0
    writer = rows = None
    name = None

    def open_shard():
        nonlocal writer, rows, name, in_shard
        name = f"shard-{shard:06d}.{_EXT[format]}"
        in_shard = 0
        if format == "webdataset":
            import webdataset as wds

            writer = wds.TarWriter(str(dest.local(name)))
        elif format == "jsonl":
            writer = dest.local(name).open("w", encoding="utf-8")
        else:
            rows = []

    def close_shard():
        nonlocal writer, rows, shard
        if format == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            pq.write_table(pa.Table.from_pylist([_drop_empty(r) for r in rows]),
                           str(dest.local(name)), compression="zstd")
            rows = None
        else:
            writer.close()
            writer = None
        dest.commit(name)
        shard += 1

    try:
        samples = (r for r in recs if keep(r))
        if format == "webdataset":
            samples = _window_map(lambda r: _sample(r, base), samples, window=32, threads=8)
        for s in samples:
            if name is None or in_shard >= shard_size:
                if name is not None:
                    close_shard()
                open_shard()
            if format == "webdataset":
                writer.write(s)
            elif format == "jsonl":
                writer.write(json.dumps(s, ensure_ascii=False) + "\n")
            else:
                rows.append(s)
            in_shard += 1
            n += 1
            if on_record:
                on_record(n)
        if name is not None:
            close_shard()
    finally:
        if writer is not None and hasattr(writer, "close"):
            try:
                writer.close()
            except Exception:
                pass
        dest.close()
    return {"records": n, "shards": shard, "files": dest.written}


def write_results(source: str, out: str | os.PathLike, where: str | None = None,
                  store=None) -> int:
    """``itx results``: the records of ``source`` matching ``where``, as one JSON Lines file."""
    keep = compile_where(where)
    recs, _ = records_of(source, store)
    n = 0
    with open(out, "w", encoding="utf-8") as f:
        for r in recs:
            if keep(r):
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
                n += 1
    return n

