"""OCR backends on rendered text (rapidocr and tesseract read it for real) and on the
tiny-random EasyOCR checkpoint (the full detect + recognise path, meaningless text)."""
from __future__ import annotations

import json
import shutil
import socket
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from workers.models.cache import load_backend
from workers.stages.ocr import assemble
from workers.stages.ocr.rapidocr import RapidOCR
from workers.stages.ocr.tesseract import Tesseract

SIGN, SENTENCE = "OPEN 24 HOURS", "The quick brown fox"
DEJAVU = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")  # Debian fonts-dejavu-core
HAVE_TESSERACT = shutil.which("tesseract") is not None


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """Other test processes share the 2 cores; torch's spinning threads would fight them."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def font(size: int = 40):
    if DEJAVU.exists():
        return ImageFont.truetype(str(DEJAVU), size)
    return ImageFont.load_default(size=size)  # Pillow's own scalable font


def render(lines: list[str], size=(640, 200), mode="RGB") -> Image.Image:
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    for i, text in enumerate(lines):
        draw.text((30, 30 + 80 * i), text, font=font(), fill="black")
    return img.convert(mode)


def norm(s: str) -> str:
    return " ".join(s.split())


def check_record(rec: dict, img: Image.Image) -> None:
    assert set(rec) == {"text", "lines"}
    assert isinstance(rec["text"], str)
    assert rec["text"] == "\n".join(ln["text"] for ln in rec["lines"])
    w, h = img.size
    for ln in rec["lines"]:
        assert set(ln) == {"text", "box", "conf"} and ln["text"].strip()
        assert len(ln["box"]) == 4
        for x, y in ln["box"]:
            assert type(x) is int and type(y) is int
            assert 0 <= x <= w and 0 <= y <= h
        assert 0.0 <= ln["conf"] <= 1.0 and round(ln["conf"], 4) == ln["conf"]
    json.dumps(rec)  # travels as JSON


def ocr(name: str):
    if name == "tesseract" and not HAVE_TESSERACT:
        pytest.skip("needs Debian's tesseract-ocr and tesseract-ocr-eng")
    return load_backend("ocr", name)


@pytest.mark.parametrize("name", ["rapidocr", "tesseract"])
def test_reads_rendered_text(name):
    backend = ocr(name)
    images = [render([SIGN, SENTENCE]), render([SENTENCE], size=(520, 110), mode="L"),
              render([SIGN], size=(420, 120), mode="RGBA")]
    recs = backend.run(images, batch_size=2)
    assert len(recs) == 3
    for rec, img in zip(recs, images):
        check_record(rec, img)
    # exact, case-sensitive, in reading order
    assert [norm(ln["text"]) for ln in recs[0]["lines"]] == [SIGN, SENTENCE]
    assert recs[0]["text"] == f"{SIGN}\n{SENTENCE}"
    assert norm(recs[1]["text"]) == SENTENCE
    assert norm(recs[2]["text"]) == SIGN
    top, bottom = recs[0]["lines"]
    assert max(p[1] for p in top["box"]) <= min(p[1] for p in bottom["box"]) + 5
    assert all(ln["conf"] > 0.5 for ln in recs[0]["lines"])
    # the box surrounds the rendered sign (drawn at x=30, y=30, 40 px type)
    xs = [p[0] for p in top["box"]]
    ys = [p[1] for p in top["box"]]
    assert min(xs) < 60 and max(xs) > 250 and min(ys) < 50 and max(ys) > 50


@pytest.mark.parametrize("name", ["rapidocr", "tesseract"])
def test_blank_and_empty_images_give_no_text(name):
    backend = ocr(name)
    recs = backend([Image.new("RGB", (300, 200), "white"), Image.new("RGB", (0, 0))])
    assert recs == [{"text": "", "lines": []}] * 2


def test_rapidocr_never_touches_the_network(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("rapidocr tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    backend = RapidOCR()
    backend.load("builtin", "cpu", None)
    assert norm(backend([render([SIGN])])[0]["text"]) == SIGN


def test_tesseract_without_binary_says_how_to_install(monkeypatch):
    import pytesseract

    monkeypatch.setattr(pytesseract.pytesseract, "tesseract_cmd", "/nonexistent/tesseract")
    with pytest.raises(RuntimeError, match="apt-get install tesseract-ocr"):
        Tesseract().load("builtin", "cpu", None)


def test_easyocr_tiny_random_runs_detection_and_recognition(photos):
    backend = load_backend("ocr", "easyocr")  # tiny-random profile: built on first use
    assert backend.ref == "tiny-random/easyocr"
    images = [*photos, render([SIGN, SENTENCE]), Image.new("RGB", (120, 90), "white")]
    recs = backend.run(images, batch_size=2)
    assert len(recs) == len(images)
    for rec, img in zip(recs, images):
        check_record(rec, img)
    # the tiny detector is tuned to find boxes in photos, so recognition really ran ...
    assert sum(len(r["lines"]) for r in recs[:4]) >= 2
    assert recs[4]["lines"]
    # ... and nothing in a blank image
    assert recs[-1] == {"text": "", "lines": []}
    # deterministic
    assert backend.run(images, batch_size=2) == recs


def test_easyocr_tiny_checkpoint_layout(model_dir):
    from workers.models.tiny import build

    out = build("easyocr", model_dir)
    cfg = json.loads((out / "easyocr.json").read_text())
    assert (out / cfg["detector"]["file"]).name == "craft_mlt_25k.pth"
    assert (out / cfg["recognizer"]["file"]).name == "english_g2.pth"
    assert cfg["recognizer"]["network"] == "generation2"
    assert "Z" in cfg["recognizer"]["character"] and cfg["lang_list"] == ["en"]
    total = sum(f.stat().st_size for f in out.iterdir())
    assert total < 5 * 2**20


def test_craft_at_full_width_is_easyocrs_craft():
    """The detector loader takes EasyOCR's real craft_mlt_25k.pth: same keys, same shapes."""
    from easyocr.craft import CRAFT

    from workers.stages.ocr.easyocr import craft_net

    ours, theirs = craft_net(1.0).state_dict(), CRAFT().state_dict()
    assert list(ours) == list(theirs)
    assert all(ours[k].shape == theirs[k].shape for k in ours)


def test_reading_order():
    def box(x, y, w=50, h=20):
        return [[x, y], [x + w, y], [x + w, y + h], [x, y + h]]

    items = [("c", box(10, 60), 0.5), ("b", box(200, 12), 0.9), ("a", box(10, 10), 1.2),
             ("  ", box(0, 0), 0.9)]
    rec = assemble(items, (300, 100))
    assert rec["text"] == "a\nb\nc"
    assert [ln["conf"] for ln in rec["lines"]] == [1.0, 0.9, 0.5]
    assert assemble([], (10, 10)) == {"text": "", "lines": []}
