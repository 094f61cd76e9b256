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
              from ``easyocr.detection`` / ``easyocr.recognition`` and batches recognition
              across all text boxes of the mini-batch.
``rapidocr``  RapidOCR 3 (PP-OCR det/cls/rec on onnxruntime). Ref ``builtin``: the weights
              ship inside the wheel and are named by path, so it never downloads.
``tesseract`` Tesseract through pytesseract; words grouped into its lines. Ref ``builtin``
              (or a tessdata directory). Needs the Debian packages ``tesseract-ocr`` and
              ``tesseract-ocr-eng``.
"""
from __future__ import annotations

import json
import logging
import math
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from workers.models.registry import register
from workers.stages.base import Backend

log = logging.getLogger(__name__)

EASYOCR_CONFIG = "easyocr.json"
DETECTOR_FILE = "craft_mlt_25k.pth"
RECOGNIZER_FILE = "english_g2.pth"


# ---------------------------------------------------------------------------
# shared output shape


def empty() -> dict:
    return {"text": "", "lines": []}


def _rgb(img: Image.Image) -> Image.Image:
    """RGB, with any transparency flattened onto white (text on clear PNGs stays readable)."""
    if img.mode == "RGB":
        return img
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return img.convert("RGB")


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
# easyocr


def craft_net(width: float = 1.0):
    """EasyOCR's CRAFT with every channel count scaled by ``width``.

    ``width=1`` is exactly ``easyocr.craft.CRAFT`` (same modules, same state-dict keys and
    shapes), so EasyOCR's ``craft_mlt_25k.pth`` loads into it; a smaller width gives the
    tiny-random detector. Built from easyocr's own classes; ``CRAFT.forward`` is reused.
    """
    from easyocr.craft import CRAFT, double_conv
    from easyocr.model.modules import init_weights, vgg16_bn
    from torch import nn
    from torchvision.models.vgg import make_layers

    def c(n: int) -> int:
        return max(1, round(n * width))

    cfg = [c(64), c(64), "M", c(128), c(128), "M", c(256), c(256), c(256), "M",
           c(512), c(512), c(512), "M", c(512), c(512), c(512)]
    features = make_layers(cfg, batch_norm=True)  # same indices as torchvision vgg16_bn
    basenet = vgg16_bn.__new__(vgg16_bn)
    nn.Module.__init__(basenet)
    for name, (lo, hi) in zip(("slice1", "slice2", "slice3", "slice4"),
                              ((0, 12), (12, 19), (19, 29), (29, 39))):
        s = nn.Sequential()
        for i in range(lo, hi):
            s.add_module(str(i), features[i])
        setattr(basenet, name, s)
    basenet.slice5 = nn.Sequential(
        nn.MaxPool2d(kernel_size=3, stride=1, padding=1),
        nn.Conv2d(c(512), c(1024), kernel_size=3, padding=6, dilation=6),
        nn.Conv2d(c(1024), c(1024), kernel_size=1),
    )
    net = CRAFT.__new__(CRAFT)
    nn.Module.__init__(net)
    net.basenet = basenet
    net.upconv1 = double_conv(c(1024), c(512), c(256))
    net.upconv2 = double_conv(c(512), c(256), c(128))
    net.upconv3 = double_conv(c(256), c(128), c(64))
    net.upconv4 = double_conv(c(128), c(64), c(32))
    net.conv_cls = nn.Sequential(
        nn.Conv2d(c(32), c(32), kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c(32), c(32), kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c(32), c(16), kernel_size=3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c(16), c(16), kernel_size=1), nn.ReLU(inplace=True),
        nn.Conv2d(c(16), 2, kernel_size=1),
    )
    for m in (basenet, net.upconv1, net.upconv2, net.upconv3, net.upconv4, net.conv_cls):
        init_weights(m.modules())
    return net


def easyocr_config(lang: str = "en", network_params: dict | None = None) -> dict:
    """The ``easyocr.json`` for EasyOCR's recogniser for ``lang`` (its English model for ``en``)."""
    from easyocr.config import recognition_models

    if lang != "en":
        raise ValueError("only lang='en' (EasyOCR's english_g2) is wired up; add its entry here")
    model = recognition_models["gen2"]["english_g2"]
    return {
        "lang_list": [lang],
        "detector": {"network": "craft", "file": DETECTOR_FILE},
        "recognizer": {
            "network": "generation2",
            "file": model["filename"],
            "network_params": network_params or {"input_channel": 1, "output_channel": 256,
                                                 "hidden_size": 256},
            "character": model["characters"],
            "symbols": model["symbols"],
            "imgH": 64,
        },
    }


def pull_easyocr(dest: Path, lang: str = "en") -> Path:
    """Download EasyOCR's real detector and recogniser into ``dest`` (the layout above),
    through EasyOCR's own downloader, which checks each file's MD5."""
    import easyocr

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    easyocr.Reader([lang], gpu=False, model_storage_directory=str(dest),
                   user_network_directory=str(dest / ".user_network"),
                   download_enabled=True, verbose=False)
    (dest / EASYOCR_CONFIG).write_text(json.dumps(easyocr_config(lang), indent=1))
    return dest


def _read_config(ref_path: Path) -> dict:
    f = ref_path / EASYOCR_CONFIG
    return json.loads(f.read_text()) if f.exists() else easyocr_config("en")


class _Autocast:
    """Run a torch module under CUDA autocast (fp16 on real GPUs) and hand back fp32 tensors,
    which EasyOCR's numpy/OpenCV post-processing expects."""

    def __init__(self, net, device: str, dtype):
        import torch

        self.net = net
        self.enabled = device.startswith("cuda") and dtype in (torch.float16, torch.bfloat16)
        self.dtype = dtype

    def eval(self):
        self.net.eval()
        return self

    def __call__(self, *args):
        import torch

        if not self.enabled:
            return self.net(*args)
        with torch.autocast("cuda", dtype=self.dtype):
            out = self.net(*args)
        if isinstance(out, tuple):
            return tuple(o.float() for o in out)
        return out.float()


@register("ocr", "easyocr")
class EasyOCR(Backend):
    """EasyOCR's CRAFT + CRNN pipeline (what ``Reader.readtext`` does), batched."""

    batch_size: ClassVar[dict[str, int]] = {"cpu": 4, "cuda": 16}
    # crops per recogniser forward pass
    rec_batch: ClassVar[dict[str, int]] = {"cpu": 16, "cuda": 64}
    # Reader.readtext's defaults
    detect_kw: ClassVar[dict] = {"canvas_size": 2560, "mag_ratio": 1.0, "text_threshold": 0.7,
                                 "low_text": 0.4, "link_threshold": 0.4}
    group_kw: ClassVar[dict] = {"slope_ths": 0.1, "ycenter_ths": 0.5, "height_ths": 0.5,
                                "width_ths": 0.5, "add_margin": 0.1}
    min_size: ClassVar[int] = 20
    recognize_kw: ClassVar[dict] = {"decoder": "greedy", "beamWidth": 5, "contrast_ths": 0.1,
                                    "adjust_contrast": 0.5, "filter_ths": 0.003}

    def load(self, ref: str, device: str, dtype) -> None:
        import easyocr
        import torch
        from easyocr.detection import copyStateDict
        from easyocr.recognition import get_recognizer

        path = Path(ref)
        cfg = _read_config(path)
        det_file = path / cfg["detector"]["file"]
        rec_cfg = cfg["recognizer"]
        rec_file = path / rec_cfg["file"]
        for f in (det_file, rec_file):
            if not f.is_file():
                raise FileNotFoundError(
                    f"EasyOCR weights {f} are missing; run `itx models pull` "
                    f"(or use the tiny-random profile)")
        self.device, self.dtype = device, dtype

        # detector: width read off the checkpoint (1.0 for EasyOCR's own craft_mlt_25k.pth)
        state = copyStateDict(torch.load(det_file, map_location="cpu", weights_only=True))
        width = state["basenet.slice1.0.weight"].shape[0] / 64
        net = craft_net(width)
        net.load_state_dict(state)
        self.detector = _Autocast(net.to(device).eval(), device, dtype)

        # recogniser: EasyOCR's own loader (dynamic int8 on CPU, as Reader does), which
        # unpickles in full: only after the file passed torch.load(weights_only=True)
        from workers.models.trust import check_torch_file

        check_torch_file(rec_file)
        self.character = rec_cfg["character"]
        self.imgH = int(rec_cfg.get("imgH", 64))
        lang_list = cfg.get("lang_list", ["en"])
        dict_list = {lg: str(Path(easyocr.__file__).parent / "dict" / f"{lg}.txt")
                     for lg in lang_list}
        with warnings.catch_warnings():  # torch's deprecation notes on dynamic quantisation
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.filterwarnings("ignore", message=".*quantize")
            model, self.converter = get_recognizer(
                rec_cfg["network"], rec_cfg["network_params"], self.character, {}, dict_list,
                str(rec_file), device=device, quantize=True)
        self.recognizer = _Autocast(model.eval(), device, dtype)
        self.ignore_char = "".join(set(self.character) - set(_lang_chars(lang_list, rec_cfg)))

    def __call__(self, images: list[Image.Image]) -> list[dict]:
        import torch

        # 1. detect text boxes, one image at a time (sizes differ)
        crops: list[tuple[tuple[int, Any], np.ndarray]] = []
        sizes = []
        with torch.inference_mode():
            for i, img in enumerate(images):
                img = _rgb(img)
                sizes.append(img.size)
                if img.width == 0 or img.height == 0:
                    continue
                for box, crop in self._detect(np.asarray(img)):
                    crops.append(((i, box), crop))
            # 2. recognise every crop of the batch, in groups of similar width
            found = self._recognize(crops)
        out: list[list] = [[] for _ in images]
        for (i, box), text, conf in found:
            out[i].append((text, box, conf))
        return [assemble(items, size) for items, size in zip(out, sizes)]

    def _detect(self, rgb: np.ndarray) -> list:
        import cv2
        from easyocr.detection import get_textbox
        from easyocr.utils import diff, get_image_list, group_text_box

        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        polys = get_textbox(self.detector, rgb, poly=False, device=self.device,
                            **self.detect_kw)[0]
        horizontal, free = group_text_box(polys, sort_output=True, **self.group_kw)
        horizontal = [b for b in horizontal if max(b[1] - b[0], b[3] - b[2]) > self.min_size]
        free = [b for b in free
                if max(diff([c[0] for c in b]), diff([c[1] for c in b])) > self.min_size]
        if not horizontal and not free:
            return []
        image_list, _ = get_image_list(horizontal, free, grey, model_height=self.imgH)
        return image_list

    def _recognize(self, crops: list) -> list:
        from easyocr.recognition import get_text
        from easyocr.utils import calculate_ratio

        def need(crop):  # the padded width EasyOCR gives this crop
            return math.ceil(calculate_ratio(crop[1].shape[1], crop[1].shape[0])) * self.imgH

        crops = sorted(crops, key=need)
        n = max(1, self.rec_batch.get(self.device.split(":")[0], 16))
        found = []
        for k in range(0, len(crops), n):
            part = crops[k:k + n]
            with warnings.catch_warnings():  # easyocr always asks its DataLoader to pin memory
                warnings.filterwarnings("ignore", message=".*pin_memory")
                found += get_text(self.character, self.imgH, max(need(c) for c in part),
                                  self.recognizer, self.converter, part, self.ignore_char,
                                  batch_size=len(part), workers=0, device=self.device,
                                  **self.recognize_kw)
        return found


def _lang_chars(lang_list: list[str], rec_cfg: dict) -> str:
    """What Reader.setLanguageList allows: each language's characters plus the model's symbols."""
    import easyocr

    base = Path(easyocr.__file__).parent / "character"
    chars: set[str] = set()
    for lg in lang_list:
        f = base / f"{lg}_char.txt"
        if f.exists():
            chars |= set(f.read_text(encoding="utf-8-sig").splitlines())
    chars |= set(rec_cfg.get("symbols") or "0123456789!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~ ")
    return "".join(c for c in chars if len(c) == 1)


# ---------------------------------------------------------------------------
# rapidocr


@register("ocr", "rapidocr")
class RapidOCR(Backend):
    """RapidOCR 3 with the PP-OCR ONNX models its wheel ships; images one by one."""

    batch_size: ClassVar[dict[str, int]] = {"cpu": 8, "cuda": 32}
    params: ClassVar[dict] = {
        "Det.limit_type": "max",        # cap the long side (the default upscales small images)
        "Det.limit_side_len": 960,
        "Global.log_level": "error",    # "no text found" is a normal result, not a warning
    }

    def load(self, ref: str, device: str, dtype) -> None:
        import rapidocr

        if ref != "builtin":
            raise ValueError(f"rapidocr's weights ship with the package; its ref is 'builtin', "
                             f"not {ref!r}")
        models = Path(rapidocr.__file__).parent / "models"
        params = dict(self.params)
        # name every model file, so rapidocr never reaches for its downloader
        for task, pattern in (("Det", "*det*.onnx"), ("Rec", "*rec*.onnx"), ("Cls", "*cls*.onnx")):
            found = sorted(models.glob(pattern))
            if not found:
                raise FileNotFoundError(f"rapidocr ships no {pattern} in {models}; "
                                        f"reinstall rapidocr")
            params[f"{task}.model_path"] = str(found[-1])
        if device.startswith("cuda"):
            import onnxruntime

            if "CUDAExecutionProvider" in onnxruntime.get_available_providers():
                params["EngineConfig.onnxruntime.use_cuda"] = True
            else:
                log.info("rapidocr: onnxruntime has no CUDA provider here; running on CPU")
        else:
            # the process's thread budget (torch's: OMP_NUM_THREADS, set_num_threads);
            # onnxruntime's default, a spinning thread per core, starves the other stages
            import torch

            params["EngineConfig.onnxruntime.intra_op_num_threads"] = torch.get_num_threads()
        self.device, self.dtype = device, dtype
        self.engine = rapidocr.RapidOCR(params=params)
        for step in ("_load_det_model", "_load_cls_model", "_load_rec_model"):
            if hasattr(self.engine, step):  # load now, not on the first image
                getattr(self.engine, step)()

    def __call__(self, images: list[Image.Image]) -> list[dict]:
        return [self._one(_rgb(img)) for img in images]

    def _one(self, img: Image.Image) -> dict:
        if img.width == 0 or img.height == 0:
            return empty()
        res = self.engine(np.asarray(img))
        if res.boxes is None or res.txts is None:
            return empty()
        return assemble(list(zip(res.txts, res.boxes, res.scores)), img.size)


# ---------------------------------------------------------------------------
# tesseract


@register("ocr", "tesseract")
class Tesseract(Backend):
    """Tesseract via pytesseract: words grouped into Tesseract's own lines."""

    batch_size: ClassVar[dict[str, int]] = {"cpu": 8, "cuda": 8}
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

        img = _rgb(img)
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
