"""RapidOCR 3: PP-OCR on onnxruntime, with the weights its wheel ships."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import ClassVar

from PIL import Image

from workers.stages.base import Backend
from workers.stages.ocr import assemble, empty, rgb

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------
# rapidocr


class RapidOCR(Backend):
    """RapidOCR 3 with the PP-OCR ONNX models its wheel ships; images one by one."""

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
        return [self._one(rgb(img)) for img in images]

    def _one(self, img: Image.Image) -> dict:
        if img.width == 0 or img.height == 0:
            return empty()
        res = self.engine(img)  # a PIL image: rapidocr makes it BGR (it takes an array as BGR)
        if res.boxes is None or res.txts is None:
            return empty()
        return assemble(list(zip(res.txts, res.boxes, res.scores)), img.size)

