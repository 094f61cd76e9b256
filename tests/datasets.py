"""Dataset files for tests, written the way datasets ship: WebDataset shards (the
``webdataset`` library's writer, or plain ``tarfile``) and Parquet tables (pyarrow)."""
from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image


def jpeg(seed: int, size=(40, 32)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "JPEG", quality=85)
    return b.getvalue()


def png(seed: int, size=(40, 32)) -> bytes:
    a = np.random.default_rng(seed).integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    b = io.BytesIO()
    Image.fromarray(a).save(b, "PNG")
    return b.getvalue()


def caption_of(key: str) -> str:
    return f"alt text of {key}"


def wds_shard(path: Path, keys: list[str], seed: int = 0) -> Path:
    """A shard written with ``webdataset.TarWriter``: key.jpg, key.txt, key.json a sample."""
    import webdataset as wds

    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path)) as w:
        for i, k in enumerate(keys):
            w.write({"__key__": k, "jpg": jpeg(seed + i), "txt": caption_of(k),
                     "json": {"url": f"http://example.com/{k}.jpg", "width": 40}})
    return path


def tar_shard(path: Path, samples: list[tuple[str, dict[str, bytes]]]) -> Path:
    """A shard written member by member with ``tarfile``: (key, {ext: bytes}) a sample."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as t:
        for key, members in samples:
            for ext, data in members.items():
                ti = tarfile.TarInfo(f"{key}.{ext}")
                ti.size = len(data)
                ti.mtime = 0
                t.addfile(ti, io.BytesIO(data))
    return path


def sample(key: str, seed: int, image_ext: str = "jpg") -> tuple[str, dict[str, bytes]]:
    img = jpeg(seed) if image_ext == "jpg" else png(seed)
    return key, {image_ext: img, "txt": caption_of(key).encode(),
                 "json": json.dumps({"caption": caption_of(key), "url": f"u/{key}"}).encode()}


def parquet(path: Path, columns: dict, row_group_size: int | None = None) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)
    return path


def hf_struct(cells: list[tuple[bytes | None, str | None]]):
    """The Hugging Face ``datasets`` Image feature: a struct column {bytes, path}."""
    import pyarrow as pa

    t = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    return pa.array([{"bytes": b, "path": p} for b, p in cells], type=t)


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
