"""The unit every input source yields: one image to stage, or one error to record."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from workers.images import EXTENSIONS

META_VALUE_CHARS = 1000  # each metadata value is cut to this many characters
META_FIELDS = 64  # and an item carries at most this many fields


@dataclass
class InputItem:
    source: str                      # as the user named it (shard/file items: "SHARD#KEY")
    path: Path | None = None         # a local file to upload
    uri: str | None = None           # an object already in some store (s3://) or a URL
    questions: list[str] = field(default_factory=list)
    edit: list[str] = field(default_factory=list)
    coco_id: int | None = None
    file_name: str | None = None
    error: str | None = None
    data: bytes | None = None        # the image's bytes, read from a shard or a Parquet cell
    ext: str | None = None           # their extension (".jpg"), for the content key
    meta: dict | None = None         # key, shard, row, kept columns / txt+json members
    ident: str | None = None         # stable identity ("SHARD#KEY", "FILE#ROW"): the id's basis
    manifest_dir: Path | None = None  # the manifest or table that named it: reads confined there


def is_image_name(name: str) -> bool:
    return Path(name).suffix.lower() in EXTENSIONS


def cap_value(v):
    """A metadata value as JSON can carry it, strings cut to META_VALUE_CHARS."""
    if v is None or isinstance(v, (bool, int, float)):
        return v
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    if not isinstance(v, str):
        try:
            v = json.dumps(v, ensure_ascii=False, default=str)
        except (TypeError, ValueError):
            v = str(v)
    return v[:META_VALUE_CHARS]


def cap_meta(meta: dict) -> dict:
    out = {}
    for k, v in meta.items():
        if len(out) >= META_FIELDS:
            break
        out[str(k)[:100]] = cap_value(v)
    return out


_MAGIC = ((b"\xff\xd8\xff", ".jpg"), (b"\x89PNG\r\n\x1a\n", ".png"), (b"GIF8", ".gif"),
          (b"BM", ".bmp"), (b"II*\x00", ".tif"), (b"MM\x00*", ".tif"))


def sniff_ext(data: bytes, name: str | None = None) -> str:
    """The extension for image bytes: from ``name`` if it has an image one, else the magic."""
    if name and is_image_name(name):
        return Path(name).suffix.lower()
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return ".webp"
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    return ".bin"
