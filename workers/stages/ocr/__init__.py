"""OCR: printed text out of images, as lines with boxes and confidences.

Every backend turns one mini-batch of PIL images into one record per image::

    {"text": "OPEN 24 HOURS\\nThe quick brown fox",          # lines in reading order, "\\n"-joined
     "lines": [{"text": "OPEN 24 HOURS",
                "box": [[x, y], [x, y], [x, y], [x, y]],      # ints, clockwise from top-left
                "conf": 0.9731}, ...]}                        # 0..1, 4 decimals

Reading order is top-to-bottom, then left-to-right among lines that share a row.
An image without text (or with no pixels) gives ``{"text": "", "lines": []}``.

Backends
--------
``easyocr``   CRAFT detector + CRNN recogniser, PyTorch, GPU when the device is CUDA.
              The ref is a directory laid out as::

                  <dir>/craft_mlt_25k.pth   CRAFT detector state dict (EasyOCR's own file)
                  <dir>/english_g2.pth      recogniser state dict, keys prefixed ``module.``
                                            (EasyOCR's own file)
                  <dir>/easyocr.json        recogniser config: network ("generation1",
                                            "generation2"), network_params, character list,
                                            symbols, lang_list, imgH; file names of both
                                            weights. Optional: without it the directory is
                                            read as EasyOCR's English model.

              ``itx models pull`` writes it with :func:`pull_easyocr` (EasyOCR's own
              downloader, MD5-checked) into ``$ITX_MODEL_DIR/easyocr/en``; the tiny-random
              builder (``workers/models/tiny/ocr.py``) writes the same layout with a narrow
              CRAFT and a small recogniser. The detector's width is read from the checkpoint
              itself, so both load through the same code. EasyOCR's ``Reader`` is not used:
              it insists on MD5-matching downloads; this backend assembles the same pipeline
              from ``easyocr.detection`` / ``easyocr.recognition`` and, on a GPU, batches
              recognition across the mini-batch's text boxes of one padded width (each box
              padded as ``readtext`` pads it; on CPU one box per pass, as ``readtext`` does:
              the int8 recogniser scales activations per pass).
``rapidocr``  RapidOCR 3 (PP-OCR det/cls/rec on onnxruntime). Ref ``builtin``: the weights
              ship inside the wheel and are named by path, so it never downloads.
``tesseract`` Tesseract through pytesseract; words grouped into its lines. Ref ``builtin``
              (or a tessdata directory). Needs the Debian packages ``tesseract-ocr`` and
              ``tesseract-ocr-eng``.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
from PIL import Image


# ---------------------------------------------------------------------------
# shared output shape


def empty() -> dict:
    return {"text": "", "lines": []}


def rgb(img: Image.Image) -> Image.Image:
    """RGB as itx decodes any input: transparency flattened onto white (text on clear PNGs
    stays readable), 16-bit scaled to 8."""
    from workers.images import to_rgb

    return to_rgb(img)


def _box(points, width: int, height: int) -> list[list[int]]:
    """Four [x, y] int points, clamped to the image."""
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    if len(pts) != 4:  # a polygon: its bounding rectangle
        x0, y0 = pts.min(axis=0)
        x1, y1 = pts.max(axis=0)
        pts = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    return [[int(min(max(round(x), 0), width)), int(min(max(round(y), 0), height))]
            for x, y in pts]


def assemble(items: list[tuple[str, Any, float]], size: tuple[int, int]) -> dict:
    """``(text, points, conf)`` items of one image -> the OCR record, in reading order.

    Rows are formed top-down: a line joins the current row when its vertical centre lies
    within the row's first line; rows are read left to right.
    """
    w, h = size
    lines = []
    for text, points, conf in items:
        text = " ".join(str(text).split())
        if not text:
            continue
        box = _box(points, w, h)
        conf = float(conf)
        conf = 0.0 if not math.isfinite(conf) else min(max(conf, 0.0), 1.0)
        lines.append({"text": text, "box": box, "conf": round(conf, 4)})

    def span(line):
        ys = [p[1] for p in line["box"]]
        return min(ys), max(ys)

    lines.sort(key=lambda ln: (span(ln)[0] + span(ln)[1]) / 2)
    ordered: list[dict] = []
    row: list[dict] = []
    top = bottom = 0.0
    for ln in lines:
        y0, y1 = span(ln)
        centre = (y0 + y1) / 2
        if row and top <= centre <= bottom:
            row.append(ln)
            continue
        ordered += sorted(row, key=lambda r: min(p[0] for p in r["box"]))
        row, top, bottom = [ln], y0, y1
    ordered += sorted(row, key=lambda r: min(p[0] for p in r["box"]))
    return {"text": "\n".join(ln["text"] for ln in ordered), "lines": ordered}


# ---------------------------------------------------------------------------