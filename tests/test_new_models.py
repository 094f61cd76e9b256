"""Today's models (issue 12): every new backend against its model card, on tiny random weights.

Reference equivalence: the backend's batched output over a mixed mini-batch (prompts or
questions of different lengths, source images of different sizes and modes) equals what the
model card's one-input-per-call code gives on the same tiny checkpoint, loaded separately
with the library's own ``from_pretrained``. Then the whole cycle through ``itx run`` (embedded)
and one batch through real Celery workers.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import MODEL_DIR
from tests.test_run import ITX, REPO
from workers.models.cache import load_backend
from workers.models.tiny import build
from workers.stages.generate import fit, image_seed

pytestmark = pytest.mark.usefixtures("one_torch_thread")

PROMPTS = ["a cat", "a red street sign on a tree in the sky, watercolor painting of a man and a dog"]
SEEDS = [3, 11]
QUESTIONS = [["what is it?", "is there a man with a red sign in the picture?"], [],
             ["how many?"], ["is it day?"]]


# --- a small reference helper (the lead unifies it with tests/reference.py) ------------------
def tiny(name: str) -> Path:
    return build(name, MODEL_DIR)


def gen(seed: int, j: int = 0) -> torch.Generator:
    """The model card's ``generator=torch.Generator("cpu").manual_seed(...)`` for image j."""
    return torch.Generator("cpu").manual_seed(image_seed(seed, j))


def assert_images_match(got: list[list[Image.Image]], card) -> None:
    """Every image equals the card's one-prompt call (``card(i, j)``) up to float rounding."""
    for i, imgs in enumerate(got):
        for j, im in enumerate(imgs):
            ref = card(i, j)
            assert im.size == ref.size
            d = np.abs(np.asarray(im, np.int16) - np.asarray(ref, np.int16))
            assert d.max() <= 3 and (d > 0).mean() < 0.02, (i, j, d.max(), (d > 0).mean())
        if len(imgs) > 1:  # and the n images of one prompt differ
            assert np.abs(np.asarray(imgs[0], np.int16) - np.asarray(imgs[1], np.int16)).mean() > 1


def chat_card(path: Path, max_new_tokens: int):
    """The VLM model card's one-image-one-question call."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    model = AutoModelForImageTextToText.from_pretrained(path).eval()

    def ask(image: Image.Image, question: str) -> str:
        messages = [{"role": "user", "content": [{"type": "image"},
                                                 {"type": "text", "text": question}]}]
        prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        inputs = processor(text=prompt, images=[image.convert("RGB")], return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        return processor.batch_decode(ids[:, inputs["input_ids"].shape[1]:],
                                      skip_special_tokens=True)[0].strip()
    return ask


# --- generators -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["sd-turbo", "sdxl-turbo", "flux-schnell"])
def test_text_to_image_batch_equals_model_card(name):
    from diffusers import AutoPipelineForText2Image

    backend = load_backend("generate", name)
    w, h, steps = 64, 48, 2
    got = backend.run(PROMPTS, None, SEEDS, width=w, height=h, steps=steps, n=2,
                      guidance_scale=0.0)
    pipe = AutoPipelineForText2Image.from_pretrained(tiny(name))
    pipe.set_progress_bar_config(disable=True)
    extra = {"max_sequence_length": 256} if name == "flux-schnell" else {}
    assert_images_match(got, lambda i, j: pipe(
        prompt=PROMPTS[i], num_inference_steps=steps, guidance_scale=0.0, width=w, height=h,
        generator=gen(SEEDS[i], j), **extra).images[0])


def test_sd3_with_guidance_and_negative_prompt_equals_model_card():
    from diffusers import StableDiffusion3Pipeline

    backend = load_backend("generate", "sd3")
    w, h, steps, neg = 64, 48, 2, "blurry, low quality"
    got = backend.run(PROMPTS, None, SEEDS, width=w, height=h, steps=steps, n=2,
                      guidance_scale=4.5, negative_prompt=neg)
    pipe = StableDiffusion3Pipeline.from_pretrained(tiny("sd3"))
    pipe.set_progress_bar_config(disable=True)
    assert_images_match(got, lambda i, j: pipe(
        prompt=PROMPTS[i], negative_prompt=neg, num_inference_steps=steps, guidance_scale=4.5,
        width=w, height=h, generator=gen(SEEDS[i], j)).images[0])


@pytest.mark.parametrize("name,base", [("sdxl-turbo-img2img", "sdxl-turbo"),
                                       ("flux-schnell-img2img", "flux-schnell")])
def test_image_to_image_batch_equals_model_card(name, base, photos):
    from diffusers import AutoPipelineForImage2Image

    backend = load_backend("generate", name)
    sources, prompts = photos[:4], PROMPTS * 2  # RGB, non-square, grayscale, RGBA
    seeds = [1, 2, 3, 4]
    w, h, steps, strength = 64, 48, 2, 0.5
    got = backend.run(prompts, sources, seeds, width=w, height=h, steps=steps,
                      strength=strength, guidance_scale=0.0)
    pipe = AutoPipelineForImage2Image.from_pretrained(tiny(base))
    pipe.set_progress_bar_config(disable=True)
    extra = {"width": w, "height": h, "max_sequence_length": 256} if base == "flux-schnell" else {}
    assert_images_match(got, lambda i, j: pipe(
        prompt=prompts[i], image=fit(sources[i], w, h), num_inference_steps=steps,
        strength=strength, guidance_scale=0.0, generator=gen(seeds[i], j), **extra).images[0])


@pytest.mark.parametrize("size", [64, 256])
def test_if_cascade_batch_equals_deepfloyds_example(size):
    """DeepFloyd's three-stage example (stage II without a text encoder, reusing stage I's
    embeddings; stage III the SD x4 upscaler at noise level 100), one prompt per call. The
    tiny stage I is 16 px, so 64 px runs I+II and 256 px runs I+II+III."""
    from diffusers import DiffusionPipeline

    backend = load_backend("generate", "if")
    steps = 2
    got = backend.run(PROMPTS, None, SEEDS, width=size, height=size, steps=steps,
                      guidance_scale=7.0, n=1)
    stage_1 = DiffusionPipeline.from_pretrained(tiny("if"))
    stage_2 = DiffusionPipeline.from_pretrained(tiny("if-ii"), text_encoder=None)
    stage_3 = DiffusionPipeline.from_pretrained(tiny("if-iii"))
    for p in (stage_1, stage_2, stage_3):
        p.set_progress_bar_config(disable=True)

    def card(i, j):
        g = gen(SEEDS[i], j)
        prompt_embeds, negative_embeds = stage_1.encode_prompt(PROMPTS[i])
        image = stage_1(prompt_embeds=prompt_embeds, negative_prompt_embeds=negative_embeds,
                        generator=g, num_inference_steps=steps, guidance_scale=7.0,
                        output_type="pt").images
        image = stage_2(image=image, prompt_embeds=prompt_embeds,
                        negative_prompt_embeds=negative_embeds, generator=g,
                        num_inference_steps=steps, output_type="pt" if size > 64 else "pil").images
        if size == 64:
            return image[0]
        return stage_3(prompt=PROMPTS[i], image=image, noise_level=100, generator=g,
                       num_inference_steps=steps).images[0]
    assert_images_match(got, card)


def test_if_runs_only_the_stages_the_size_needs_and_records_them():
    from workers.spec import PipelineSpec

    backend = load_backend("generate", "if")
    refs = {s: backend.stage_refs(PipelineSpec(generator="if", size=s).resolved("tiny-random"))
            for s in ("16x16", "64x48", "256x256")}
    assert list(refs["16x16"]) == ["generate:if"]
    assert list(refs["64x48"]) == ["generate:if", "generate:if-ii"]
    assert refs["256x256"] == {"generate:if": "tiny-random/if", "generate:if-ii":
                               "tiny-random/if-ii", "generate:if-iii": "tiny-random/if-iii"}
    out = backend.run(["a dog"], None, [5], width=64, height=48, steps=1)
    assert out[0][0].size == (64, 48)
    with pytest.raises(ValueError, match="later stage of the DeepFloyd IF cascade"):
        load_backend("generate", "if-ii").run(["a dog"], None, [1], width=64, height=64, steps=1)


def test_family_defaults_apply_unless_set():
    from workers.spec import PipelineSpec

    turbo = PipelineSpec(generator="sdxl-turbo").resolved("base")
    assert (turbo.steps, turbo.guidance, turbo.size) == (1, 0.0, "512x512")
    flux = PipelineSpec(generator="flux-schnell", steps=8, guidance=1.5).resolved("base")
    assert (flux.steps, flux.guidance, flux.size) == (8, 1.5, "1024x1024")
    sd = PipelineSpec(generator="sd").resolved("base")
    assert (sd.steps, sd.guidance, sd.size) == (25, 7.5, "512x512")
    small = PipelineSpec(generator="flux-schnell").resolved("tiny-random")
    assert (small.steps, small.size, small.guidance) == (4, "64x64", 0.0)


# --- Florence-2 -----------------------------------------------------------------------------
def florence_card(max_new_tokens: int):
    from transformers import AutoProcessor, Florence2ForConditionalGeneration

    path = tiny("florence-2")
    model = Florence2ForConditionalGeneration.from_pretrained(path).eval()
    processor = AutoProcessor.from_pretrained(path)

    def run(image: Image.Image, task: str):
        image = image.convert("RGB")
        inputs = processor(text=task, images=image, return_tensors="pt")
        with torch.inference_mode():
            ids = model.generate(input_ids=inputs["input_ids"], pixel_values=inputs["pixel_values"],
                                 max_new_tokens=max_new_tokens, num_beams=3, do_sample=False)
        text = processor.batch_decode(ids, skip_special_tokens=False)[0]
        return processor.post_process_generation(text, task=task, image_size=image.size)[task]
    return run


@pytest.mark.parametrize("task", [None, "<DETAILED_CAPTION>"])
def test_florence_captions_batch_equals_model_card(task, photos):
    backend = load_backend("caption", "florence-2")
    got = backend.run(photos, task=task) if task else backend.run(photos)
    card = florence_card(backend.new_tokens)
    assert got == [card(im, task or "<CAPTION>").strip() for im in photos]
    assert len(set(got)) > 1  # the images are told apart


def test_florence_ocr_lines_and_boxes_equal_model_card(photos):
    backend = load_backend("ocr", "florence-2")
    got = backend.run(photos)
    card = florence_card(backend.new_tokens)
    for im, rec in zip(photos, got):
        ref = card(im, "<OCR_WITH_REGION>")
        assert rec["text"] == "\n".join(ln["text"] for ln in rec["lines"])
        want = sorted(" ".join(t.replace("</s>", "").replace("<s>", "").split())
                      for t in ref["labels"])
        assert sorted(ln["text"] for ln in rec["lines"]) == [t for t in want if t]
        for ln in rec["lines"]:
            assert len(ln["box"]) == 4 and 0 < ln["conf"] <= 1
            assert all(0 <= x <= im.width and 0 <= y <= im.height for x, y in ln["box"])


def test_caption_prompt_picks_the_florence_task_or_the_chat_prompt():
    from workers.spec import PipelineSpec

    florence, chat = load_backend("caption", "florence-2"), load_backend("caption", "smolvlm")
    spec = PipelineSpec(caption_prompt="<more_detailed_caption>")
    assert florence.spec_kwargs(spec) == {"task": "<MORE_DETAILED_CAPTION>"}
    assert chat.spec_kwargs(spec) == {}
    spec = PipelineSpec(caption_prompt="Name the animal.")
    assert florence.spec_kwargs(spec) == {} and chat.spec_kwargs(spec) == {"prompt": "Name the animal."}


# --- chat VLMs ------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["smolvlm", "qwen2.5-vl"])
def test_chat_vlm_captions_and_answers_equal_model_card(name, photos):
    caption, vqa = load_backend("caption", name), load_backend("vqa", name)
    ask = chat_card(tiny(name), caption.max_new_tokens)
    prompt = "Describe the picture."
    got = caption.run(photos, prompt=prompt)
    assert got == [ask(im, prompt) for im in photos]
    answers = vqa.run(photos, QUESTIONS)
    ask = chat_card(tiny(name), vqa.max_new_tokens)
    assert answers == [{q: ask(im, q) for q in qs} for im, qs in zip(photos, QUESTIONS)]
    assert answers[1] == {} and all(a for d in answers for a in d.values())


def test_vlms_over_2b_route_to_heavy():
    from workers.stages import table

    assert table.queue_of("caption", "qwen2.5-vl") == "heavy"
    assert table.queue_of("vqa", "qwen2.5-vl") == "heavy"
    assert table.queue_of("caption", "smolvlm") == "light"


# --- the whole cycle ------------------------------------------------------------------------
def itx(*args, env=None, timeout=900):
    import os

    return subprocess.run([*ITX, *args], capture_output=True, text=True, timeout=timeout, check=False,
                          cwd=REPO, env={**os.environ, **(env or {})})


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]


NEW_GENERATORS = ["sd-turbo", "sdxl-turbo-img2img", "flux-schnell", "flux-schnell-img2img",
                  "sd-turbo-img2img", "sd3"]


@pytest.fixture(scope="module")
def cycle_runs(tmp_path_factory):
    """The whole-cycle `itx run`s of this module, one interpreter for all of them
    (tests/clirun.py: the CLI's entry point once per argv; torch and the shared captioner
    and VQA model load once, not seven times). Each run writes its own --out folder."""
    from tests.clirun import itx_runs

    base = tmp_path_factory.mktemp("cycle")
    florence = ["run", str(REPO / "examples/images"), "--out", str(base / "florence"),
                "--profile", "tiny-random", "--ocr", "florence-2",
                "--captioners", "florence-2,smolvlm,qwen2.5-vl",
                "--caption-prompt", "What is in the picture?", "--vqa", "what is it?",
                "--vqa-backend", "qwen2.5-vl", "--generator", "if", "--size", "256x256",
                "--steps", "1", "--guidance", "5", "--negative-prompt", "blurry"]
    each = [["run", str(REPO / "examples/images"), "--out", str(base / g), "--profile",
             "tiny-random", "--ocr", "none", "--captioners", "smolvlm", "--vqa", "is it day?",
             "--vqa-backend", "smolvlm", "--generator", g, "--size", "64x48", "--n", "2"]
            for g in NEW_GENERATORS]
    runs = itx_runs([florence, *each])
    return base, dict(zip(["florence", *NEW_GENERATORS], runs))


N_EXAMPLES = len(list((REPO / "examples/images").iterdir()))


def test_itx_run_with_florence_vlms_and_the_if_cascade(cycle_runs):
    base, runs = cycle_runs
    out, r = base / "florence", runs["florence"]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = records(out)
    assert len(recs) == N_EXAMPLES and all(rec["error"] is None for rec in recs), \
        [rec["error"] for rec in recs]
    assert any(rec["ocr"]["lines"] for rec in recs)
    for rec in recs:
        assert set(rec["captions"]) == {"florence-2", "smolvlm", "qwen2.5-vl"}
        assert all(rec["captions"].values()) and rec["vqa"]["what is it?"]
        assert rec["models"]["ocr:florence-2"] == "tiny-random/florence-2"
        assert all(len(ln["box"]) == 4 for ln in rec["ocr"]["lines"])  # random weights: any
        assert {k: v for k, v in rec["models"].items() if k.startswith("generate")} == {
            "generate:if": "tiny-random/if", "generate:if-ii": "tiny-random/if-ii",
            "generate:if-iii": "tiny-random/if-iii"}
        assert rec["models"]["vqa:qwen2.5-vl"] == "tiny-random/qwen2.5-vl"
        (uri,) = rec["outputs"]
        assert Image.open(uri[len("file://"):]).size == (256, 256)


@pytest.mark.slow
@pytest.mark.parametrize("generator", NEW_GENERATORS)
def test_itx_run_with_each_new_generator(generator, cycle_runs):
    base, runs = cycle_runs
    out, r = base / generator, runs[generator]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = records(out)
    assert len(recs) == N_EXAMPLES
    for rec in recs:
        assert rec["error"] is None, rec["error"]
        assert rec["reused"] == []  # computed by this run, not taken from another's store
        assert rec["models"][f"generate:{generator}"] == \
            f"tiny-random/{generator.removesuffix('-img2img')}"
        assert rec["vqa"]["is it day?"] and rec["captions"]["smolvlm"]
        assert [Image.open(u[len("file://"):]).size for u in rec["outputs"]] == [(64, 48)] * 2


def test_bad_option_values_fail_before_any_work(tmp_path):
    r = itx("run", str(REPO / "examples/images"), "--out", str(tmp_path), "--profile",
            "tiny-random", "--guidance", "-1")
    assert r.returncode == 2 and "--guidance: input should be greater than or equal to 0" in \
        (r.stdout + r.stderr).lower()
    r = itx("run", str(REPO / "examples/images"), "--out", str(tmp_path), "--profile",
            "tiny-random", "--vqa-backend", "nope")
    assert r.returncode == 2 and "qwen2.5-vl" in r.stdout + r.stderr  # the choices are listed


@pytest.mark.cluster
@pytest.mark.slow
def test_one_batch_through_real_workers(tmp_path, model_dir):
    """A VLM captioner and VQA backend on the light pool (smolvlm) and the heavy pool
    (qwen2.5-vl), flux-schnell on the heavy pool: real Redis, real worker processes."""
    from tests.cluster import BIN, redis_server, worker_env, workers

    with redis_server() as redis:
        env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": f"file://{tmp_path / 'store'}", "ITX_PROFILE": "tiny-random",
               "ITX_MODEL_DIR": str(model_dir), "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
        with workers(env, tag="models"):
            r = subprocess.run(
                [str(BIN / "itx"), "submit", str(REPO / "examples/images"), "--batch", "vlm",
                 "--wait", "--ocr", "none", "--captioners", "smolvlm,qwen2.5-vl",
                 "--vqa", "what is it?", "--vqa-backend", "qwen2.5-vl",
                 "--generator", "flux-schnell", "--size", "32x32"],
                capture_output=True, text=True, env=worker_env(env), cwd=REPO, timeout=600,
                check=False)
            assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    recs = [json.loads(p.read_text())
            for p in (tmp_path / "store/runs/vlm/results").glob("*.json")]
    assert recs and all(rec["error"] is None for rec in recs), [rec["error"] for rec in recs]
    for rec in recs:
        assert set(rec["captions"]) == {"smolvlm", "qwen2.5-vl"} and rec["vqa"]["what is it?"]
        assert rec["models"]["generate:flux-schnell"] == "tiny-random/flux-schnell"
        (uri,) = rec["outputs"]
        assert Image.open(uri[len("file://"):]).size == (32, 32)


# --- BLIP-2 ---------------------------------------------------------------------------------
def test_blip2_captions_and_answers_equal_model_card(photos):
    from transformers import Blip2ForConditionalGeneration, Blip2Processor

    caption, vqa = load_backend("caption", "blip2"), load_backend("vqa", "blip2")
    path = tiny("blip2")
    processor = Blip2Processor.from_pretrained(path)
    model = Blip2ForConditionalGeneration.from_pretrained(path).eval()

    def card(image, prompt=None, max_new_tokens=30):
        inputs = processor(images=image.convert("RGB"), text=prompt, return_tensors="pt")
        with torch.inference_mode():
            out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        if prompt:  # the output repeats the prompt
            out = out[:, inputs["input_ids"].shape[1]:]
        return processor.batch_decode(out, skip_special_tokens=True)[0].strip()

    assert caption.run(photos) == [card(im, max_new_tokens=caption.max_new_tokens) for im in photos]
    answers = vqa.run(photos, QUESTIONS)
    assert answers == [{q: card(im, f"Question: {q} Answer:", vqa.max_new_tokens) for q in qs}
                       for im, qs in zip(photos, QUESTIONS)]
    assert answers[1] == {} and all(a for d in answers for a in d.values())
    assert caption.ref == "tiny-random/blip2"
