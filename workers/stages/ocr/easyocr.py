"""EasyOCR's CRAFT detector and CRNN recogniser, assembled and batched (see the package
docstring for the model directory's layout)."""
from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from workers.stages.base import Backend
from workers.stages.ocr import assemble, rgb

log = logging.getLogger(__name__)

EASYOCR_CONFIG = "easyocr.json"
DETECTOR_FILE = "craft_mlt_25k.pth"
RECOGNIZER_FILE = "english_g2.pth"

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


class EasyOCR(Backend):
    """EasyOCR's CRAFT + CRNN pipeline (what ``Reader.readtext`` does), batched."""

    # crops per recogniser forward pass. One on CPU, as Reader does there: its recogniser is
    # int8 with activations scaled per pass, so a crop's text would depend on its neighbours
    rec_batch: ClassVar[dict[str, int]] = {"cpu": 1, "cuda": 64}
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
        widths: list[int] = []
        sizes = []
        with torch.inference_mode():
            for i, img in enumerate(images):
                img = rgb(img)
                sizes.append(img.size)
                if img.width == 0 or img.height == 0:
                    continue
                for box, crop, width in self._detect(np.asarray(img)):
                    crops.append(((i, box), crop))
                    widths.append(width)
            # 2. recognise every crop of the batch, in groups of the same padded width
            found = self._recognize(crops, widths)
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
        # each box on its own, as Reader.recognize does: a crop is padded to its own width
        out = []
        for h_list, f_list in [([b], []) for b in horizontal] + [([], [b]) for b in free]:
            image_list, width = get_image_list(h_list, f_list, grey, model_height=self.imgH)
            out += [(box, crop, width) for box, crop in image_list]
        return out

    def _recognize(self, crops: list, widths: list[int]) -> list:
        from easyocr.recognition import get_text

        by_width: dict[int, list] = {}
        for crop, width in zip(crops, widths):
            by_width.setdefault(width, []).append(crop)
        n = max(1, self.rec_batch.get(self.device.split(":")[0], 1))
        found = []
        for width, group in sorted(by_width.items()):
            for k in range(0, len(group), n):
                part = group[k:k + n]
                with warnings.catch_warnings():  # easyocr always has its DataLoader pin memory
                    warnings.filterwarnings("ignore", message=".*pin_memory")
                    found += get_text(self.character, self.imgH, width, self.recognizer,
                                      self.converter, part, self.ignore_char,
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

