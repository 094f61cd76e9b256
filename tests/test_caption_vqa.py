"""Captioning and VQA backends on tiny-random checkpoints, through the production loader."""
from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from workers.models import tiny
from workers.models.cache import load_backend
from workers.stages import table

CAPTIONERS = ["blip", "git", "vit-gpt2"]
QUESTIONS = ["what is in the image?", "how many dogs are there?"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_dirs(model_dir):
    return {n: tiny.build(n, model_dir) for n in [*CAPTIONERS, "blip-vqa"]}


@pytest.mark.parametrize("name", CAPTIONERS)
def test_captioner_batches_and_is_deterministic(name, tiny_dirs, photos):
    backend = load_backend("caption", name)
    assert backend.ref == f"tiny-random/{name}"
    assert next(backend.model.parameters()).dtype == torch.float32

    caps = backend.run(photos, batch_size=4)
    assert len(caps) == len(photos)
    assert all(isinstance(c, str) and c == c.strip() for c in caps)
    assert any(caps), "every caption decoded empty: no word tokens came out"
    # the image reaches the decoder: four different photos do not all get the same caption
    assert len(set(caps)) > 1, caps
    # same input, same output; mini-batching does not change any caption
    assert backend.run(photos, batch_size=4) == caps
    assert backend.run(photos, batch_size=2) == caps
    assert backend(photos[1:2]) == caps[1:2]


@pytest.mark.parametrize("name", CAPTIONERS)
def test_prompt_starts_every_caption(name, tiny_dirs, photos):
    """A decoder prompt is continued, in each architecture's own input format."""
    cls = type("Prompted", (table.get("caption", name).load_class(),), {"prompt": "a man with"})
    backend = cls()
    backend.load(str(tiny_dirs[name]), "cpu", torch.float32)
    caps = backend(photos[:2], max_new_tokens=5)
    assert len(caps) == 2
    assert all(c.startswith("a man with") for c in caps), caps


def test_vqa_answers_each_images_questions(tiny_dirs, photos):
    backend = load_backend("vqa", "blip-vqa")
    questions = [QUESTIONS] * len(photos)
    answers = backend.run(photos, questions, batch_size=4)
    assert len(answers) == len(photos)
    for a in answers:
        assert list(a) == QUESTIONS
        assert all(isinstance(v, str) for v in a.values())
    assert any(v for a in answers for v in a.values())
    assert backend.run(photos, questions, batch_size=2) == answers
    # each image its own questions, none at all included
    mixed = backend.run(photos[:3], [QUESTIONS[:1], [], QUESTIONS[::-1]])
    assert [list(a) for a in mixed] == [QUESTIONS[:1], [], QUESTIONS[::-1]]
    assert mixed[0][QUESTIONS[0]] == answers[0][QUESTIONS[0]]
    assert mixed[2] == answers[2]


def test_any_local_image_to_text_dir_loads_through_the_fallback(tiny_dirs, photos):
    path = str(tiny_dirs["blip"])
    assert table.get("caption", path).load_class() is table.get("caption", "blip").load_class()
    backend = load_backend("caption", path)
    assert backend.ref == path
    assert backend.run(photos) == load_backend("caption", "blip").run(photos)


@pytest.mark.parametrize("name", [*CAPTIONERS, "blip-vqa"])
def test_tiny_checkpoint_is_small_and_deterministic(name, tmp_path):
    a = tiny.build(name, tmp_path / "a")
    b = tiny.build(name, tmp_path / "b")
    files = sorted(p.name for p in a.iterdir())
    assert files == sorted(p.name for p in b.iterdir())
    assert "model.safetensors" in files and "tokenizer.json" in files
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f"{name}/{f} differs between builds"
    size = sum(p.stat().st_size for p in a.iterdir())
    assert size < 10 * 2**20, f"{name}: {size} bytes"
