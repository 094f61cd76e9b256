"""COCO captions as a map-style dataset, without importing torch.

``COCODataset(annotations, images)`` reads a COCO captions annotation file
(``captions_val2017.json`` and the like) with pycocotools and an image root that is a
local folder or an ``s3://`` prefix. Each item is a dict::

    {"image": <PIL.Image RGB> (or the raw bytes with decode=False),
     "image_id": 397133, "file_name": "000000397133.jpg",
     "captions": ["A man is in a kitchen making pizzas.", ...],
     "error": None}

It has ``__len__``/``__getitem__`` and pickles small (no COCO index, no S3 client), so
``torch.utils.data.DataLoader(ds, batch_size=8, num_workers=2, collate_fn=collate_pil)``
works where images are decoded for models, while the orchestrator, which only needs
``iter_items()`` (URIs, ids and file names, no image bytes), never imports torch.

An image that cannot be read does not stop a loader: its item has ``image=None`` and
the reason in ``error`` (``strict=True`` raises instead), like a bad item anywhere
else in itx.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["COCODataset", "collate_pil", "load_captions"]


def _is_s3(root: str) -> bool:
    return root.startswith("s3://")


def load_captions(annotations: str | Path) -> tuple[dict[int, dict], dict[int, list[str]]]:
    """Read a COCO annotation file with pycocotools (quietly).

    Returns ``(images, captions)``: ``images[id]`` is the file's image entry
    (``file_name``, ``width``, ``height``…) and ``captions[id]`` the reference captions
    in file order (empty for an image without any, e.g. a test split's image-info file).
    """
    from pycocotools.coco import COCO

    path = Path(annotations)
    if not path.is_file():
        raise FileNotFoundError(f"no COCO annotation file at {str(path)!r}")
    # pycocotools prints "loading annotations into memory..." and timings; keep stdout clean
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            coco = COCO(str(path))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{str(path)!r} is not a COCO annotation file: {e}") from None
    if not isinstance(coco.dataset, dict) or "images" not in coco.dataset:
        raise ValueError(f"{str(path)!r} has no 'images' list: not a COCO annotation file")
    images = {int(img["id"]): img for img in coco.dataset["images"]}
    captions: dict[int, list[str]] = {i: [] for i in images}
    for ann in coco.dataset.get("annotations", []):
        cap = ann.get("caption")
        if isinstance(cap, str) and int(ann["image_id"]) in captions:
            captions[int(ann["image_id"])].append(cap.strip())
    return images, captions


class COCODataset:
    """A COCO captions split as a map-style dataset (no torch import).

    Args:
        annotations: the COCO captions JSON (``annotations/captions_val2017.json``).
        images: the image root: a local folder or an ``s3://bucket/prefix``; each image
            is ``<images>/<file_name>``.
        ids: only these image ids, in this order (an unknown id is a ``KeyError``).
        limit: at most this many images (after ``ids``).
        decode: ``True`` gives an RGB ``PIL.Image``; ``False`` the file's bytes.
        strict: raise on an unreadable image instead of returning ``image=None`` with
            the reason in ``error``.
    """

    def __init__(self, annotations: str | Path, images: str | Path,
                 ids: Iterable[int] | None = None, limit: int | None = None,
                 decode: bool = True, strict: bool = False):
        if limit is not None and limit < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        self.annotations = str(annotations)
        root = str(images)
        self.root = root.rstrip("/") if _is_s3(root) else str(Path(root).expanduser().resolve())
        if not _is_s3(self.root) and not Path(self.root).is_dir():
            raise FileNotFoundError(f"image root {root!r} is not a folder")
        self.decode = decode
        self.strict = strict

        entries, captions = load_captions(annotations)
        if ids is None:
            order = list(entries)
        else:
            order = [int(i) for i in ids]
            missing = [i for i in order if i not in entries]
            if missing:
                shown = ", ".join(map(str, missing[:10])) + (" …" if len(missing) > 10 else "")
                raise KeyError(f"image ids not in {self.annotations}: {shown}")
        if limit is not None:
            order = order[:limit]
        # only what items need: the dataset pickles small into DataLoader workers
        self._items: list[tuple[int, str, list[str]]] = [
            (i, str(entries[i]["file_name"]), captions[i]) for i in order]
        self._store = None
        self._store_pid: int | None = None

    # --- map-style dataset ---------------------------------------------------
    def __len__(self) -> int:
        return len(self._items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        if index < 0:
            index += len(self._items)
        if not 0 <= index < len(self._items):
            raise IndexError(f"index {index} out of range for {len(self._items)} images")
        image_id, file_name, caps = self._items[index]
        item: dict[str, Any] = {"image": None, "image_id": image_id, "file_name": file_name,
                                "captions": list(caps), "error": None}
        try:
            data = self._read(file_name)
            item["image"] = _decode(data) if self.decode else data
        except Exception as e:  # a bad image is its item's error, not the loader's
            if self.strict:
                raise
            item["error"] = f"{type(e).__name__}: {e}"
        return item

    def __repr__(self) -> str:
        return f"COCODataset({self.annotations!r}, images={self.root!r}, n={len(self)})"

    # --- light items for the submitter -----------------------------------------
    def source(self, file_name: str) -> str:
        """Where an image lives: a local path or an ``s3://`` URI (nothing is read)."""
        if _is_s3(self.root):
            return f"{self.root}/{file_name.lstrip('/')}"
        return str(Path(self.root) / file_name)

    def iter_items(self) -> Iterator[dict[str, Any]]:
        """``{"source", "coco_id", "file_name"}`` per image, in dataset order, reading no bytes."""
        for image_id, file_name, _ in self._items:
            yield {"source": self.source(file_name), "coco_id": image_id, "file_name": file_name}

    def references(self) -> dict[int, list[str]]:
        """Reference captions by image id, for the selected images."""
        return {image_id: list(caps) for image_id, _, caps in self._items}

    # --- reading ----------------------------------------------------------------
    def _read(self, file_name: str) -> bytes:
        if _is_s3(self.root):
            return self._s3().get(file_name.lstrip("/"))
        root = Path(self.root)
        path = (root / file_name).resolve()
        if path != root and root not in path.parents:
            raise PermissionError(f"{file_name!r} resolves outside the image root {self.root}")
        return path.read_bytes()

    def _s3(self):
        # one store (and boto3 client) per process: clients do not survive fork/pickle
        if self._store is None or self._store_pid != os.getpid():
            from workers.storage import S3Store

            self._store = S3Store(self.root)
            self._store_pid = os.getpid()
        return self._store

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_store"] = None
        state["_store_pid"] = None
        return state


def _decode(data: bytes):
    from PIL import Image, ImageOps

    from workers.images import FORMATS

    with Image.open(io.BytesIO(data), formats=FORMATS) as im:
        im = ImageOps.exif_transpose(im)
        return im.convert("RGB")


def collate_pil(batch: list[dict[str, Any]]) -> dict[str, list]:
    """Batch dataset items into a dict of lists (PIL images stay PIL images).

    ``DataLoader``'s default collate would try to stack images as tensors; models here
    take lists of PIL images, so ``{"image": [im, …], "image_id": [1, …], …}``.
    """
    if not batch:
        return {}
    keys = list(batch[0])
    return {k: [item.get(k) for item in batch] for k in keys}
