"""WebDataset tar shards as input, read as a stream (never extracted, never held in memory).

A sample is the run of consecutive members sharing a ``__key__`` (the member path up to the
first dot of its file name, as the ``webdataset`` library splits it: ``a/b.seg.png`` is key
``a/b``, extension ``seg.png``). A sample whose image member has a known image type becomes
one item; its ``txt`` member and the fields of its ``json`` member become the item's metadata,
with ``key`` and ``shard``. The ``webdataset`` library itself is not imported here: it pulls
in torch, which the orchestrator never imports; shards are read with ``tarfile`` in stream
mode, which is how the library reads them too.
"""
from __future__ import annotations

import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from orchestrator.inputs.item import InputItem, cap_meta, cap_value
from workers.images import EXTENSIONS

SHARD_SUFFIXES = (".tar", ".tar.gz", ".tgz")
_KEY_EXT = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")  # webdataset's base_plus_ext
_IMAGE_EXTS = {e.lstrip(".") for e in EXTENSIONS}


def is_shard_name(name: str) -> bool:
    return name.lower().endswith(SHARD_SUFFIXES)


_EXT_CACHE: dict[str, str | None] = {}


def _image_ext(ext: str) -> str | None:
    """The image type of a member extension (``jpg``, ``seg.png`` -> png), or None."""
    got = _EXT_CACHE.get(ext, False)
    if got is False:
        last = ext.lower().rsplit(".", 1)[-1]
        got = _EXT_CACHE[ext] = last if last in _IMAGE_EXTS else None
    return got


class _Sample:
    __slots__ = ("key", "image", "ext", "texts", "others", "error")

    def __init__(self, key: str):
        self.key, self.image, self.ext, self.error = key, None, None, None
        self.texts: dict[str, str] = {}
        self.others: list[str] = []

    def item(self, shard: str, base: str) -> InputItem:
        key = self.key
        meta: dict = {}
        raw = self.texts.get("json")
        if raw is not None:
            try:
                obj = json.loads(raw)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                meta.update(obj)
            else:
                meta["json"] = raw if obj is None else obj
        txt = self.texts.get("txt")
        if txt is not None:
            meta["txt"] = txt
            meta.setdefault("caption", txt)
        meta["key"], meta["shard"] = key, shard
        meta = cap_meta(meta)
        source, ident = f"{shard}#{key}", f"{base}#{key}"
        if self.image is None:
            why = self.error or (f"no_image_member: sample {key!r} has no image member "
                                 f"(members: {', '.join(sorted({*self.texts, *self.others}))})")
            return InputItem(source=source, error=why, meta=meta, ident=ident)
        return InputItem(source=source, data=self.image, ext=self.ext, meta=meta, ident=ident)


def _text(data: bytes) -> str:
    return cap_value(data.decode("utf-8", "replace").strip())


def iter_tar(fileobj, shard: str, *, max_bytes: int, base: str | None = None
             ) -> Iterator[InputItem]:
    """The items of one shard read from ``fileobj`` front to back. A shard that cannot be read
    at all is one error item; one that breaks midway keeps the samples before the break and
    adds one error item for the shard."""
    try:
        tar = tarfile.open(fileobj=fileobj, mode="r|*")
    except (tarfile.TarError, OSError, EOFError) as e:
        yield InputItem(source=shard, error=f"bad_shard: cannot read {shard} as a tar: {e}")
        return
    cur: _Sample | None = None
    count = 0
    try:
        for m in tar:
            tar.members = []  # tarfile keeps every member it has seen: not over a whole shard
            if not m.isfile():
                continue
            km = _KEY_EXT.match(m.name)
            if not km:
                continue
            k, ext = km.group(1), km.group(2)
            if k.rpartition("/")[2].startswith("."):  # ._foo (macOS), hidden files
                continue
            if cur is None or k != cur.key:
                if cur is not None:
                    yield cur.item(shard, base)
                    count += 1
                cur = _Sample(k)
            img = _image_ext(ext)
            if img:
                if cur.image is not None:
                    continue  # the first image member is the sample's image
                if m.size > max_bytes:
                    cur.error = (f"file_too_large: {ext} member of {k!r} is {m.size} bytes, "
                                 f"over the limit of {max_bytes}")
                    continue
                data = tar.extractfile(m).read()
                if len(data) < m.size:
                    raise EOFError("unexpected end of data")
                cur.image, cur.ext = data, "." + img
            elif ext in ("txt", "json") and m.size <= 1 << 20:
                data = tar.extractfile(m).read()
                if len(data) < m.size:
                    raise EOFError("unexpected end of data")
                cur.texts[ext] = _text(data) if ext == "txt" else data.decode("utf-8", "replace")
            else:
                cur.others.append(ext)
        if cur is not None:
            yield cur.item(shard, base)
    except (tarfile.TarError, OSError, EOFError, ValueError) as e:
        # the sample being read is dropped unless its image was read whole
        if cur is not None and cur.image is not None:
            yield cur.item(shard, base)
            count += 1
        from workers.storage import StoreError

        kind = "store_error" if isinstance(e, StoreError) else "truncated_shard"
        yield InputItem(source=shard, error=f"{kind}: {shard} breaks after {count} samples "
                        f"(the samples before the break are kept): {e}")
    except Exception as e:  # a network stream failing midway (botocore errors)
        yield InputItem(source=shard, error=f"unreadable_shard: {shard} breaks after {count} "
                        f"samples: {type(e).__name__}: {e}")


def iter_shard(ref: str) -> Iterator[InputItem]:
    """One shard: a local path or an ``s3://`` object."""
    from workers.settings import get_settings

    max_bytes = get_settings().max_image_bytes
    if ref.startswith("s3://"):
        from orchestrator.inputs.s3 import open_stream
        from workers.storage import StoreError

        try:
            body = open_stream(ref)
        except StoreError as e:
            yield InputItem(source=ref, error=f"store_error: cannot read shard {ref}: {e}")
            return
        try:
            yield from iter_tar(body, ref, max_bytes=max_bytes)
        finally:
            body.close()
        return
    p = Path(ref).expanduser()
    try:
        f = p.open("rb")
    except OSError as e:
        yield InputItem(source=ref, error=f"unreadable: cannot open shard {ref!r}: {e.strerror}")
        return
    with f:
        yield from iter_tar(f, ref, max_bytes=max_bytes, base=str(p.resolve()))
