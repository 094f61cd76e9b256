"""Batched output == the model card's one-input-per-call use of the same checkpoint.

Every caption, VQA and OCR backend gets the same check: its ``run`` over one mixed
mini-batch (sizes, modes, question lengths) must give, item for item, what the model's
own library gives when called the way its model card shows, one input per call, greedy.

A reference is registered per ``"stage:name"``::

    @reference("caption:my-model")
    def _my_model(path):                       # path: the checkpoint's local directory
        model = MyModel.from_pretrained(path)
        processor = AutoProcessor.from_pretrained(path)

        def one(image):                        # one input, as the model card calls it
            out = model.generate(**processor(image, return_tensors="pt"), **GREEDY)
            return processor.decode(out[0], skip_special_tokens=True).strip()

        return Reference(one)

and the test is one line: ``check("caption:my-model", images)`` (``check("vqa:…", images,
questions)`` where a backend takes more columns; ``Reference(one, view=…)`` where the
backend's output needs a view to compare, e.g. OCR records as sets of lines).

Images: the backend gets each image as it is (any mode); the reference gets it as itx
decodes every input before any stage (:func:`workers.images.to_rgb`: transparency on white,
16-bit scaled to 8). The libraries disagree on other modes (HF processors saturate 16-bit,
rapidocr reads a palette's indices as grey and picks a black or white background by
luminance, easyocr takes paths and arrays), so a backend must convert the way itx does;
``test_reference.py`` checks that HF processors flatten 8-bit modes exactly as itx does.
"""
from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from workers.images import to_rgb

MAX_NEW_TOKENS = 30  # the captioners' default; VQA uses its own (BlipVQA.max_new_tokens)


def greedy(max_new_tokens: int) -> dict:
    return {"max_new_tokens": max_new_tokens, "num_beams": 1, "do_sample": False}


@dataclass
class Reference:
    """``call(image, *columns)`` -> one expected output; ``view(output)`` -> comparable form;
    ``library``: the library's own object, for checks below the output (optional)."""

    call: Callable[..., Any]
    view: Callable[[Any], Any] = field(default=lambda out: out)
    library: Any = None


REFERENCES: dict[str, Callable[[str], Reference]] = {}


def reference(key: str):
    """Register ``factory(checkpoint_path) -> Reference`` for ``"stage:name"``."""
    def deco(factory):
        REFERENCES[key] = factory
        return factory
    return deco


def assert_matches_reference(backend, ref: Reference, images: list, *columns: list,
                             batch_size: int | None = None) -> list:
    """``backend.run`` over the whole list in one mini-batch (or ``batch_size``) equals
    ``ref.call`` on each item alone. Returns the backend's outputs."""
    got = backend.run(images, *columns, batch_size=batch_size or len(images))
    want = [ref.call(to_rgb(img), *(c[k] for c in columns)) for k, img in enumerate(images)]
    assert len(got) == len(want)
    bad = [(k, ref.view(g), w) for k, (g, w) in enumerate(zip(got, want)) if ref.view(g) != w]
    assert not bad, (f"{backend.stage}:{backend.name}: {len(bad)} of {len(images)} items differ "
                     f"from the one-per-call reference (item, batched, reference): {bad}")
    return got


def check(key: str, images: list, *columns: list, name: str | None = None,
          batch_size: int | None = None) -> list:
    """Load ``key``'s backend (or ``name``, e.g. a local path, with ``key``'s reference)
    through the production loader and assert it matches ``REFERENCES[key]``."""
    from workers.models.cache import load_backend
    from workers.models.loader import resolve_model

    stage, _, default = key.partition(":")
    backend = load_backend(stage, name or default)
    ref = REFERENCES[key](resolve_model(backend.ref))
    return assert_matches_reference(backend, ref, images, *columns, batch_size=batch_size)


# --- test images ---------------------------------------------------------------------

def mixed_modes(photos: list[Image.Image]) -> list[Image.Image]:
    """Photos in every mode an input can decode to: RGB and L at different sizes, RGBA and
    P with real transparency, 16-bit grey (as Pillow opens a 16-bit PNG)."""
    rgb, coffee, grey, cat = photos[:4]
    rgba = np.asarray(cat.convert("RGBA")).copy()
    rgba[..., 3] = np.linspace(0, 255, rgba.shape[1]).astype(np.uint8)[None, :]
    palette = coffee.resize((150, 100)).convert("P", palette=Image.Palette.ADAPTIVE)
    palette.info["transparency"] = 0
    return [rgb, coffee, grey, Image.fromarray(rgba, "RGBA"), palette, sixteen_bit(grey)]


def sixteen_bit(img: Image.Image) -> Image.Image:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(img.convert("L")).astype(np.uint16) * 257).save(buf, "PNG")
    out = Image.open(io.BytesIO(buf.getvalue()))
    out.load()
    assert out.mode == "I;16", out.mode
    return out


# --- captioning: the model cards' code --------------------------------------------------

@reference("caption:blip")
def _blip(path: str) -> Reference:
    """Salesforce/blip-image-captioning-base, unconditional captioning."""
    from transformers import BlipForConditionalGeneration, BlipProcessor

    processor = BlipProcessor.from_pretrained(path)
    model = BlipForConditionalGeneration.from_pretrained(path).eval()

    def one(image):
        inputs = processor(image, return_tensors="pt")
        out = model.generate(**inputs, **greedy(MAX_NEW_TOKENS))
        return processor.decode(out[0], skip_special_tokens=True).strip()

    return Reference(one)


@reference("caption:git")
def _git(path: str) -> Reference:
    """microsoft/git-base-coco."""
    from transformers import AutoModelForCausalLM, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()

    def one(image):
        pixel_values = processor(images=image, return_tensors="pt").pixel_values
        generated_ids = model.generate(pixel_values=pixel_values, **greedy(MAX_NEW_TOKENS))
        return processor.batch_decode(generated_ids, skip_special_tokens=True)[0].strip()

    return Reference(one)


@reference("caption:vit-gpt2")
def _vit_gpt2(path: str) -> Reference:
    """nlpconnect/vit-gpt2-image-captioning (greedy, not the card's 4 beams)."""
    from transformers import AutoTokenizer, VisionEncoderDecoderModel, ViTImageProcessor

    model = VisionEncoderDecoderModel.from_pretrained(path).eval()
    feature_extractor = ViTImageProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)

    def one(image):
        pixel_values = feature_extractor(images=[image], return_tensors="pt").pixel_values
        output_ids = model.generate(pixel_values, **greedy(MAX_NEW_TOKENS))
        return tokenizer.batch_decode(output_ids, skip_special_tokens=True)[0].strip()

    return Reference(one)


# --- VQA -------------------------------------------------------------------------------

@reference("vqa:blip-vqa")
def _blip_vqa(path: str) -> Reference:
    """Salesforce/blip-vqa-base: one image, one question per ``generate``."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    from workers.stages.vqa.blip import BlipVQA

    processor = BlipProcessor.from_pretrained(path)
    model = BlipForQuestionAnswering.from_pretrained(path).eval()

    def answer(image, question):
        inputs = processor(image, question, return_tensors="pt")
        out = model.generate(**inputs, **greedy(BlipVQA.max_new_tokens))
        return processor.decode(out[0], skip_special_tokens=True).strip()

    def one(image, questions):  # an image's questions, each asked on its own
        return {q: answer(image, q) for q in dict.fromkeys(questions or [])}

    return Reference(one)


# --- OCR: each library called on one image -----------------------------------------------

def ocr_line(text: str, points, conf: float, size: tuple[int, int]) -> tuple:
    """A library's (text, points, confidence) in the record's units (docs of workers.stages.ocr):
    whitespace-joined text, int corner points within the image, confidence to 4 decimals."""
    w, h = size
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    box = tuple((min(max(round(x), 0), w), min(max(round(y), 0), h)) for x, y in pts)
    return " ".join(str(text).split()), box, round(min(max(float(conf), 0.0), 1.0), 4)


def record_lines(rec: dict) -> list[tuple]:
    """An OCR record as a sorted list of lines (reading order is itx's, not the library's)."""
    return sorted((ln["text"], tuple(map(tuple, ln["box"])), ln["conf"]) for ln in rec["lines"])


@reference("ocr:rapidocr")
def _rapidocr(path: str) -> Reference:
    """``engine = RapidOCR(params=...); result = engine(image)``, with the backend's settings."""
    import rapidocr

    from workers.stages.ocr.rapidocr import RapidOCR

    models = Path(rapidocr.__file__).parent / "models"
    params = {**RapidOCR.params, "EngineConfig.onnxruntime.intra_op_num_threads": 1}
    for task, pattern in (("Det", "*det*.onnx"), ("Rec", "*rec*.onnx"), ("Cls", "*cls*.onnx")):
        params[f"{task}.model_path"] = str(max(models.glob(pattern)))
    engine = rapidocr.RapidOCR(params=params)

    def one(image):
        result = engine(image)
        if result.txts is None:
            return []
        lines = [ocr_line(t, b, s, image.size) for t, b, s in
                 zip(result.txts, result.boxes, result.scores)]
        return sorted(ln for ln in lines if ln[0])

    return Reference(one, view=record_lines, library=engine)


@reference("ocr:tesseract")
def _tesseract(path: str) -> Reference:
    """``pytesseract.image_to_string(image)``: its lines (boxes and confidences are the
    backend's own grouping of ``image_to_data``, checked in test_ocr.py)."""
    import pytesseract

    from workers.stages.ocr.tesseract import Tesseract

    def one(image):
        text = pytesseract.image_to_string(image, lang=Tesseract.lang, config=Tesseract.config)
        return sorted(" ".join(ln.split()) for ln in text.splitlines() if ln.strip())

    return Reference(one, view=lambda rec: sorted(rec["text"].splitlines()))


@reference("ocr:easyocr")
def _easyocr(path: str) -> Reference:
    """``reader = easyocr.Reader(["en"])``; ``reader.detect`` + ``reader.recognize`` per image
    (what ``readtext`` runs), with the checkpoint's detector and recogniser put into the
    Reader (it loads only MD5-matching downloads)."""
    import json
    import tempfile

    import cv2
    import easyocr
    import torch
    from easyocr.detection import copyStateDict, get_textbox
    from easyocr.recognition import get_recognizer

    from workers.stages.ocr.easyocr import craft_net

    cfg = json.loads((Path(path) / "easyocr.json").read_text())
    tmp = Path(tempfile.mkdtemp(prefix="easyocr-ref-"))
    reader = easyocr.Reader(cfg["lang_list"], gpu=False, model_storage_directory=str(path),
                            user_network_directory=str(tmp), download_enabled=False,
                            detector=False, recognizer=False, verbose=False)
    state = copyStateDict(torch.load(Path(path) / cfg["detector"]["file"], weights_only=True))
    net = craft_net(state["basenet.slice1.0.weight"].shape[0] / 64)  # the checkpoint's width
    net.load_state_dict(state)
    reader.detector, reader.get_textbox = net.eval(), get_textbox
    rec = cfg["recognizer"]
    dict_list = {lg: str(Path(easyocr.__file__).parent / "dict" / f"{lg}.txt")
                 for lg in cfg["lang_list"]}
    reader.recognizer, reader.converter = get_recognizer(
        rec["network"], rec["network_params"], rec["character"], {}, dict_list,
        str(Path(path) / rec["file"]), device="cpu", quantize=True)

    def one(image):
        # readtext(file) is detect(RGB) + recognize(grey), called here on the image itself
        # (a PNG file's grey from cv2.imread rounds differently from cv2.cvtColor by 1 level)
        rgb = np.asarray(image)
        grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
        with torch.inference_mode():
            horizontal, free = reader.detect(rgb, reformat=False)
            found = reader.recognize(grey, horizontal[0], free[0], reformat=False)
        return sorted(ln for ln in (ocr_line(t, b, c, image.size) for b, t, c in found) if ln[0])

    return Reference(one, view=record_lines, library=reader)


class Recorder:
    """Wraps a network: each forward pass's inputs and outputs, one (input, output) per item."""

    def __init__(self, net):
        self.net, self.items = net, []

    def eval(self):
        return self

    def __call__(self, x, *args):
        y = self.net(x, *args)
        self.items += [(x[k].clone(), y[k].clone()) for k in range(len(x))]
        return y
