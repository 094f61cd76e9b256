"""Tesseract through pytesseract."""
from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ClassVar

from PIL import Image

from workers.stages.base import Backend
from workers.stages.ocr import assemble, empty, rgb

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# tesseract


class Tesseract(Backend):
    """Tesseract via pytesseract: words grouped into Tesseract's own lines."""

    lang: ClassVar[str] = "eng"
    config: ClassVar[str] = "--psm 3"
    threads: ClassVar[int] = 4

    def load(self, ref: str, device: str, dtype) -> None:
        import pytesseract

        self.device, self.dtype = device, dtype
        self._config = self.config
        if ref != "builtin":
            if not Path(ref).is_dir():
                raise ValueError(f"tesseract's ref is 'builtin' or a tessdata directory, "
                                 f"not {ref!r}")
            self._config += f' --tessdata-dir "{ref}"'
        try:
            pytesseract.get_tesseract_version()
        except pytesseract.TesseractNotFoundError:
            raise RuntimeError(
                "the tesseract binary is not installed (or not on PATH); install it with "
                "`apt-get install tesseract-ocr tesseract-ocr-eng`, or choose --ocr rapidocr"
            ) from None
        langs = pytesseract.get_languages(config=self._config)
        missing = [lg for lg in self.lang.split("+") if lg not in langs]
        if missing:
            raise RuntimeError(f"tesseract has no language data for {'+'.join(missing)}; "
                               f"install it with `apt-get install tesseract-ocr-{missing[0]}`")

    def __call__(self, images: list[Image.Image]) -> list[dict]:
        if len(images) <= 1:
            return [self._one(img) for img in images]
        with ThreadPoolExecutor(max_workers=min(self.threads, len(images))) as pool:
            return list(pool.map(self._one, images))

    def _one(self, img: Image.Image) -> dict:
        import pytesseract

        img = rgb(img)
        if img.width == 0 or img.height == 0:
            return empty()
        d = pytesseract.image_to_data(img, lang=self.lang, config=self._config,
                                      output_type=pytesseract.Output.DICT)
        words: dict[tuple, list[int]] = {}
        for i, text in enumerate(d["text"]):
            if float(d["conf"][i]) < 0 or not str(text).strip():
                continue
            key = (d["page_num"][i], d["block_num"][i], d["par_num"][i], d["line_num"][i])
            words.setdefault(key, []).append(i)
        items = []
        for idx in words.values():
            x0 = min(d["left"][i] for i in idx)
            y0 = min(d["top"][i] for i in idx)
            x1 = max(d["left"][i] + d["width"][i] for i in idx)
            y1 = max(d["top"][i] + d["height"][i] for i in idx)
            conf = sum(float(d["conf"][i]) for i in idx) / len(idx) / 100
            items.append((" ".join(str(d["text"][i]) for i in idx),
                          [[x0, y0], [x1, y0], [x1, y1], [x0, y1]], conf))
        return assemble(items, img.size)
