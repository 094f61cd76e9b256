"""Every caption, VQA and OCR backend, batched, against its model card's one-input-per-call use
of the same tiny-random (or built-in) checkpoint: see tests/reference.py."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

torch = pytest.importorskip("torch")

from tests.reference import check, mixed_modes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

QUESTIONS = [
    "what?",
    ("how many dogs are sitting on the large white table next to the window of the old red "
     "house near the river?"),
    "is it a cat?",
    "what color is the bus?",
    "yes",
]
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")


@pytest.fixture(scope="module")
def images(photos):
    return mixed_modes(photos)


@pytest.mark.parametrize("key", ["caption:blip", "caption:git", "caption:vit-gpt2"])
def test_captioner_matches_model_card(key, images):
    caps = check(key, images)
    assert len(set(caps)) > 1, caps  # the images reach the decoder


def test_caption_fallback_by_local_path_matches_model_card(images, model_dir):
    from workers.models import tiny

    path = str(tiny.build("blip", model_dir))
    check("caption:blip", images, name=path)


def test_hf_processors_flatten_8bit_modes_as_itx_does(images, model_dir):
    """The references get itx's RGB; for every 8-bit mode a processor takes, that is what the
    processor itself makes of the image (16-bit aside: processors saturate it, itx scales it;
    ViT's processor has no RGB conversion and fails on a grey image)."""
    from transformers import AutoImageProcessor

    from workers.images import to_rgb
    from workers.models import tiny

    compared = 0
    for name in ("blip", "git", "vit-gpt2"):
        proc = AutoImageProcessor.from_pretrained(tiny.build(name, model_dir))
        for img in images:
            if img.mode.startswith("I;16"):
                continue
            try:
                a = proc(img, return_tensors="pt").pixel_values
            except (ValueError, RuntimeError):
                assert not getattr(proc, "do_convert_rgb", False), (name, img.mode)
                continue
            b = proc(to_rgb(img), return_tensors="pt").pixel_values
            assert torch.equal(a, b), (name, img.mode)
            compared += 1
    assert compared >= 10


def vqa_questions(n: int) -> list[list[str]]:
    """Very different lengths, repeated questions, an image with none, one with all."""
    q = QUESTIONS
    per_image = [q[:3], [q[1], q[1], q[0]], [], q[2:], [q[4]], q]
    return (per_image * n)[:n]


def test_vqa_matches_model_card_for_any_mix_of_questions(images):
    from workers.models.cache import load_backend

    tok = load_backend("vqa", "blip-vqa").tokenizer
    assert len({len(tok(q).input_ids) for q in QUESTIONS}) >= 4  # really mixed lengths
    questions = vqa_questions(len(images))
    answers = check("vqa:blip-vqa", images, questions)
    assert [list(a) for a in answers] == [list(dict.fromkeys(qs)) for qs in questions]
    assert answers[2] == {}
    # in smaller mini-batches too
    check("vqa:blip-vqa", images, questions, batch_size=4)


def test_blip_generate_attends_to_question_padding(images, model_dir):
    """Why BlipVQA never pads: transformers' batched generate over padded questions changes
    answers. If this starts failing, transformers masks the padding and the bucketing in
    BlipVQA.__call__ may go."""
    from transformers import BlipForQuestionAnswering, BlipProcessor

    from tests.reference import REFERENCES
    from workers.images import to_rgb
    from workers.models import tiny
    from workers.stages.vqa.blip import BlipVQA

    path = str(tiny.build("blip-vqa", model_dir))
    processor = BlipProcessor.from_pretrained(path)
    model = BlipForQuestionAnswering.from_pretrained(path).eval()
    ref = REFERENCES["vqa:blip-vqa"](path)
    img = to_rgb(images[0])
    inputs = processor([img] * len(QUESTIONS), QUESTIONS, padding=True, return_tensors="pt")
    out = model.generate(**inputs, max_new_tokens=BlipVQA.max_new_tokens)
    padded = dict(zip(QUESTIONS, (a.strip() for a in
                                  processor.batch_decode(out, skip_special_tokens=True))))
    assert padded != ref.call(img, QUESTIONS)


# --- OCR ---------------------------------------------------------------------------------

def render(lines: list[str], size, fg="black", bg="white") -> Image.Image:
    font = (ImageFont.truetype(str(DEJAVU), 36) if DEJAVU.exists()
            else ImageFont.load_default(size=36))
    img = Image.new("RGB", size, bg)
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        draw.text((24, 20 + 64 * i), text, font=font, fill=fg)
    return img


@pytest.fixture(scope="module")
def text_images():
    """Printed text at several sizes in every mode; coloured text shows a channel swap."""
    from tests.reference import sixteen_bit

    sign = render(["OPEN 24 HOURS", "The quick brown fox"], (560, 160))
    clear = render(["Clear sky"], (300, 90)).convert("RGBA")
    clear.putalpha(Image.eval(render(["Clear sky"], (300, 90)).convert("L"),
                              lambda v: 255 - v))  # black text on a transparent ground
    return [
        render(["Red alert 42"], (420, 100), fg=(200, 20, 20), bg=(120, 170, 255)),
        sign,
        render(["grey words"], (360, 90)).convert("L"),
        clear,
        render(["Palette 7"], (300, 90), fg=(20, 90, 30), bg=(250, 240, 200)).convert(
            "P", palette=Image.Palette.ADAPTIVE),
        sixteen_bit(render(["Deep 16 bit"], (360, 90))),
        Image.new("RGB", (200, 120), "white"),
    ]


def test_rapidocr_matches_library(text_images):
    recs = check("ocr:rapidocr", text_images)
    assert sum(len(r["lines"]) for r in recs) >= 6  # real text was read


@pytest.mark.skipif(shutil.which("tesseract") is None,
                    reason="needs Debian's tesseract-ocr and tesseract-ocr-eng")
def test_tesseract_matches_library(text_images):
    recs = check("ocr:tesseract", text_images)
    assert sum(len(r["lines"]) for r in recs) >= 6


def test_easyocr_matches_library(images, text_images, model_dir):
    """The tiny detector finds boxes in photos, so boxes must match readtext's. Its random
    recogniser reads the same letter everywhere, so below the text: every crop must reach
    the recogniser as the same tensor as in readtext and get the same logits back."""
    from tests.reference import REFERENCES, Recorder, assert_matches_reference
    from workers.models import tiny
    from workers.stages.ocr.easyocr import EasyOCR

    path = str(tiny.build("easyocr", model_dir))
    backend = EasyOCR()  # not the process's cached one: its recogniser gets wrapped
    backend.load(path, "cpu", torch.float32)
    ref = REFERENCES["ocr:easyocr"](path)
    backend.recognizer = ours = Recorder(backend.recognizer)
    ref.library.recognizer = theirs = Recorder(ref.library.recognizer)
    recs = assert_matches_reference(backend, ref, [*images, *text_images[:2]])
    assert sum(len(r["lines"]) for r in recs) >= 3, recs
    assert len(ours.items) == len(theirs.items) >= 3
    unmatched = list(ours.items)
    for x, y in theirs.items:
        same = [k for k, (x2, _) in enumerate(unmatched) if x2.shape == x.shape
                and torch.equal(x2, x)]
        assert same, f"readtext's recogniser input {tuple(x.shape)} never reached ours as is"
        assert any(torch.equal(unmatched[k][1], y) for k in same), "logits differ"
        unmatched.pop(next(k for k in same if torch.equal(unmatched[k][1], y)))
