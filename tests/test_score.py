"""The score stage: CLIPScore checked against independent implementations on the tiny CLIP,
batching and determinism, the safety checker's flags, `best` captions, and `--score` through
`itx run` (embedded) and `itx submit` to real worker processes."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.stages import score as S

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TEXTS = ["a cat on the street", "a red sign", "two dogs", "the sky with a tree and a man",
         "", "photo " * 60]  # an empty caption; one past CLIP's 77 tokens


@pytest.fixture(scope="module")
def clip(model_dir, one_torch_thread):
    from workers.models.cache import load_backend

    return load_backend("score", "clip", ref="tiny-random/clip", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def clip_dir(clip, model_dir) -> Path:
    return model_dir / "tiny-random" / "clip"


@pytest.fixture(scope="module")
def images(photos):
    return [p.convert("RGB") for p in photos] + [Image.new("RGB", (40, 90), (200, 30, 30)),
                                                 Image.open(REPO / "examples/images/sign.png")]


def _pairs(images):
    return images, TEXTS[:len(images)]


# --- agreement with independent implementations -----------------------------------------------
def test_clipscore_agrees_with_clipmodel_forward(clip, clip_dir, images):
    """By hand: a fresh CLIPModel's own forward pass gives logits = scale * cos; CLIPScore is
    2.5 * max(cos, 0) (Hessel et al. 2021)."""
    import torch
    from transformers import CLIPModel, CLIPProcessor

    model, proc = CLIPModel.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)
    imgs, texts = _pairs(images)
    ours = clip.score(imgs, texts)
    for im, t, got in zip(imgs, texts, ours):
        x = proc(text=[t], images=[im], return_tensors="pt", padding=True, truncation=True,
                 max_length=77)
        with torch.no_grad():
            out = model(**x)
        cos = (out.logits_per_image / model.logit_scale.exp()).item()
        assert got == pytest.approx(2.5 * max(cos, 0.0), abs=1e-4)
    assert any(s > 0 for s in ours) and all(0 <= s <= 2.5 for s in ours)


def test_clipscore_agrees_with_torchmetrics(clip, clip_dir, images):
    tm = pytest.importorskip("torchmetrics.functional.multimodal")
    import torch
    from transformers import CLIPModel, CLIPProcessor

    class Features(CLIPModel):  # transformers 5 returns outputs; torchmetrics wants tensors
        def get_image_features(self, *a, **k):
            return _tensor(super().get_image_features(*a, **k))

        def get_text_features(self, *a, **k):
            return _tensor(super().get_text_features(*a, **k))

    def _tensor(o):
        return o if isinstance(o, torch.Tensor) else o.pooler_output

    def load():
        return Features.from_pretrained(clip_dir).eval(), CLIPProcessor.from_pretrained(clip_dir)

    imgs, texts = _pairs(images)
    texts = [t for t in texts if t.strip() and len(t) < 200]  # torchmetrics does not truncate
    imgs = imgs[:len(texts)]
    ours = clip.score(imgs, texts)
    for im, t, got in zip(imgs, texts, ours):
        pix = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        theirs = tm.clip_score(pix, t, model_name_or_path=load).item()  # 100 * max(cos, 0)
        assert got == pytest.approx(2.5 * theirs / 100, abs=1e-4)


# --- batching and determinism ------------------------------------------------------------------
def test_batched_equals_one_by_one_and_runs_repeat(clip, images):
    imgs, texts = _pairs(images)
    for kind, xs in (("image", imgs), ("text", texts)):
        whole = clip.run(xs, kind=kind, batch_size=64)
        singles = clip.run(xs, kind=kind, batch_size=1)
        threes = clip.run(xs, kind=kind, batch_size=3)
        np.testing.assert_allclose(np.stack(whole), np.stack(singles), atol=1e-5)
        np.testing.assert_allclose(np.stack(whole), np.stack(threes), atol=1e-5)
        again = clip.run(xs, kind=kind, batch_size=64)
        assert all(np.array_equal(a, b) for a, b in zip(whole, again))  # bit for bit
        assert all(abs(np.linalg.norm(v) - 1) < 1e-5 for v in whole)
    assert clip.score(imgs, texts) == clip.score(imgs, texts)


def test_readback_and_best_caption():
    assert S.readback("OPEN 24 HOURS\nFresh coffee", "open 24  hours fresh coffee") == 1.0
    assert S.readback("OPEN", "") == 0.0
    assert S.readback("OPEN 24 HOURS", "OPEN 24 HOUR") == pytest.approx(1 - 1 / 13, abs=1e-4)
    sc = {"clip:caption:blip": 0.2, "clip:caption:git": 0.7, "clip:caption:vit-gpt2": 0.7}
    assert S.best_caption(sc, ["blip", "git", "vit-gpt2"]) == "git"  # the first of equals
    assert S.best_caption({}, ["blip"]) is None
    assert S.clip_score(-0.3) == 0.0 and S.clip_score(0.4) == 1.0
    assert S.family("clip-i:output:3") == "clip-i:output" and S.family("clip:prompt") == "clip:prompt"


def test_spec_options():
    from workers.spec import PipelineSpec

    plain = PipelineSpec().resolved("tiny-random")
    scored = PipelineSpec(score=True).resolved("tiny-random")
    assert plain.scorer is None and scored.scorer == "clip"
    assert plain.fingerprint() != scored.fingerprint()  # scored items are other items
    best = PipelineSpec(caption_for_prompt="best").resolved("tiny-random")
    assert best.scorer == "clip" and best.caption_for_prompt == "best" and not best.score
    with pytest.raises(ValueError, match="at least one captioner"):
        PipelineSpec(caption_for_prompt="best", captioners=[])
    with pytest.raises(ValueError, match="unknown scorer"):
        PipelineSpec(score=True, scorer="nope")


# --- the safety checker's verdicts ---------------------------------------------------------------
def build_checked_sd(model_dir: Path, out: Path, flag_all: bool) -> Path:
    """The tiny SD with a tiny safety checker whose concept thresholds flag every image
    (``flag_all``) or none."""
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
    from transformers import CLIPConfig, CLIPImageProcessor

    from workers.models.loader import resolve_model

    base = StableDiffusionPipeline.from_pretrained(resolve_model("tiny-random/sd", model_dir))
    torch.manual_seed(0)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    checker = StableDiffusionSafetyChecker(CLIPConfig(
        text_config=tower, vision_config=dict(tower, image_size=32, patch_size=8),
        projection_dim=768))
    with torch.no_grad():
        checker.concept_embeds_weights.fill_(-10.0 if flag_all else 10.0)
        checker.special_care_embeds_weights.fill_(10.0)
    pipe = StableDiffusionPipeline(
        vae=base.vae, text_encoder=base.text_encoder, tokenizer=base.tokenizer, unet=base.unet,
        scheduler=base.scheduler, safety_checker=checker, requires_safety_checker=True,
        feature_extractor=CLIPImageProcessor(size={"shortest_edge": 32},
                                             crop_size={"height": 32, "width": 32}))
    pipe.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def flagging_sd(model_dir, tmp_path_factory):
    # under ITX_MODEL_DIR: the only local paths the operator allows by default
    return build_checked_sd(model_dir, model_dir / "local" / "sd-flags-all", True)


def test_generator_returns_the_checkers_verdicts(model_dir, flagging_sd, tmp_path,
                                                 one_torch_thread):
    from workers.models.cache import load_backend

    passing = build_checked_sd(model_dir, model_dir / "local" / "sd-flags-none", False)
    for ref, want in ((flagging_sd, True), (passing, False)):
        b = load_backend("generate", "sd", ref=str(ref), device="cpu", dtype="float32")
        out = b.run(["a cat", "a dog", "a tree"], None, [1, 2, 3], width=32, height=32, steps=2,
                    n=2, batch_size=2)
        assert [o.nsfw for o in out] == [[want, want]] * 3
    plain = load_backend("generate", "sd", ref="tiny-random/sd", device="cpu", dtype="float32")
    out = plain(["a cat"], None, [1], width=32, height=32, steps=2, n=1)
    assert out[0].nsfw == [None]  # no checker, no verdict


# --- through the CLI -----------------------------------------------------------------------------
def itx(*args, env=None, timeout=900):
    e = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([str(BIN / "itx"), *args], capture_output=True, text=True, env=e,
                          timeout=timeout, cwd=REPO)


def manifest(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, photos) -> Path:
    d = tmp_path_factory.mktemp("in")
    shutil.copy(REPO / "examples/images/sign.png", d / "sign.png")  # has OCR text
    photos[0].resize((96, 96)).save(d / "astronaut.png")
    photos[1].save(d / "coffee.jpg")
    return d


OPTS = ["--profile", "tiny-random", "--captioners", "blip,git", "--size", "32x32", "--steps", "2",
        "--n", "2", "--score", "--caption-for-prompt", "best"]


@pytest.fixture(scope="module")
def scored_runs(inputs, tmp_path_factory):
    """The same inputs twice: all in one chunk, then one item per chunk (other mini-batches).
    Both runs in one interpreter (tests/clirun.py); each writes its own store, so the second
    computes everything again (no stage reuse across stores)."""
    from tests.clirun import itx_runs

    outs = [tmp_path_factory.mktemp(f"run{chunk}") for chunk in ("8", "1")]
    runs = itx_runs([["run", str(inputs), "--out", str(out), *OPTS, "--chunk", chunk]
                     for out, chunk in zip(outs, ("8", "1"))])
    for r in runs:
        assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    for out in outs:
        assert all(rec["reused"] == [] for rec in manifest(out))
    return outs


def check_scored(rec: dict, n: int = 2) -> None:
    assert not rec["error"], rec["error"]
    sc = rec["scores"]
    for key in ("clip:caption:blip", "clip:caption:git", "clip:prompt"):
        assert 0.0 <= sc[key] <= 2.5, key
    for k in range(n):
        assert 0.0 <= sc[f"clip:output:{k}"] <= 2.5
        assert -1.0 <= sc[f"clip-i:output:{k}"] <= 1.0
    assert rec["models"]["score:clip"] == "tiny-random/clip"
    assert rec["timings_ms"]["score:clip"] > 0
    # best: the prompt starts from the caption with the highest CLIPScore
    cands = {c: sc[f"clip:caption:{c}"] for c in rec["captions"]}
    assert rec["prompt_caption"] == max(cands, key=lambda c: (cands[c], -list(cands).index(c)))
    assert rec["prompt"] == rec["captions"][rec["prompt_caption"]]
    assert sc["clip:prompt"] == pytest.approx(sc[f"clip:caption:{rec['prompt_caption']}"], abs=1e-4)


def test_itx_run_score_embedded(scored_runs):
    recs = manifest(scored_runs[0])
    assert len(recs) == 3
    for rec in recs:
        check_scored(rec)
        assert rec["flags"] == {}  # the tiny SD has no safety checker
    sign = next(r for r in recs if r["source"].endswith("sign.png"))
    assert sign["ocr"]["text"].strip()
    assert 0.0 <= sign["scores"]["ocr-readback:output:0"] <= 1.0
    assert "ocr-readback:output:1" in sign["scores"]
    others = [r for r in recs if not r["ocr"]["text"].strip()]
    assert others and all(not any(k.startswith("ocr-readback") for k in r["scores"]) for r in others)
    # the scores differ between items and captions: they measure something
    assert len({r["scores"]["clip-i:output:0"] for r in recs}) == 3


def test_scores_are_deterministic_across_chunkings(scored_runs):
    a, b = ({r["id"]: r for r in manifest(out)} for out in scored_runs)
    assert a.keys() == b.keys()
    for i in a:
        assert a[i]["scores"].keys() == b[i]["scores"].keys()
        for k, v in a[i]["scores"].items():
            assert b[i]["scores"][k] == pytest.approx(v, abs=1e-4), k
        assert a[i]["prompt_caption"] == b[i]["prompt_caption"]


def test_itx_eval_scores_and_refclipscore(scored_runs, clip, tmp_path):
    out = scored_runs[0]
    recs = manifest(out)
    r = itx("eval", str(out / "manifest.jsonl"), "--json", str(tmp_path / "m.json"))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "clip-i:output" in r.stdout and "median" in r.stdout and "Captioners" in r.stdout
    got = json.loads((tmp_path / "m.json").read_text())["scores"]
    vals = [v for rec in recs for k, v in rec["scores"].items() if k.startswith("clip-i:output:")]
    st = got["scores"]["clip-i:output"]
    assert st["n"] == 6 and st["mean"] == pytest.approx(np.mean(vals), abs=1e-4)
    assert st["p10"] == pytest.approx(np.percentile(vals, 10), abs=1e-4)
    assert st["p90"] == pytest.approx(np.percentile(vals, 90), abs=1e-4)
    assert st["median"] == pytest.approx(np.median(vals), abs=1e-4)
    caps = got["captioners"]
    assert set(caps) == {"blip", "git"}
    assert sum(c["best"] for c in caps.values()) == 3  # each item's winner, counted once
    blip = [rec["scores"]["clip:caption:blip"] for rec in recs]
    assert caps["blip"]["clip"]["mean"] == pytest.approx(np.mean(blip), abs=1e-4)

    # with --coco: RefCLIPScore = harmonic mean of CLIPScore and the best reference cosine
    refs = {"sign.png": ["a sign that says open", "a shop sign"], "coffee.jpg": ["a cup of coffee"],
            "astronaut.png": ["a woman in a space suit", "an astronaut", "a portrait"]}
    ann = {"images": [{"id": i + 1, "file_name": f} for i, f in enumerate(refs)],
           "annotations": [{"id": 100 * (i + 1) + j, "image_id": i + 1, "caption": c}
                           for i, f in enumerate(refs) for j, c in enumerate(refs[f])]}
    (tmp_path / "ann.json").write_text(json.dumps(ann))
    r = itx("eval", str(out / "manifest.jsonl"), "--coco", str(tmp_path / "ann.json"),
            "--json", str(tmp_path / "c.json"))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    assert "Caption metrics" in r.stdout
    metrics = json.loads((tmp_path / "c.json").read_text())
    from workers.stages.score.clip import cosine

    for c in ("blip", "git"):
        want = []
        for rec in recs:
            cap = clip.run([rec["captions"][c]], kind="text")[0]
            ref = max(max(cosine(cap, e) for e in clip.run(refs[Path(rec["source"]).name],
                                                            kind="text")), 0.0)
            cs = rec["scores"][f"clip:caption:{c}"]
            want.append(0.0 if cs + ref == 0 else 2 * cs * ref / (cs + ref))
        assert metrics[c]["RefCLIPScore"] == pytest.approx(np.mean(want), abs=1e-4)
        assert "Bleu_1" in metrics[c]


def test_itx_report_of_a_scored_run(scored_runs, tmp_path):
    out = scored_runs[0]
    r = itx("report", str(out / "manifest.jsonl"), "--out", str(tmp_path / "rep"),
            "--sort", "clip-i:output:0")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    page = (tmp_path / "rep/index.html").read_text()
    assert page.count("<h3>Scores</h3>") == 3 and '<option value="clip-i:output:0" selected>' in page
    assert Image.open(tmp_path / "rep/scores.png").size[0] > 600
    assert Image.open(tmp_path / "rep/contact-sheet.png").size[1] == 3 * (192 + 48)
    r = itx("report", str(out / "manifest.jsonl"), "--out", str(tmp_path / "rep"), "--sort", "nope")
    assert r.returncode == 2 and "no record has that score" in r.stderr


def test_flags_reach_the_records(inputs, flagging_sd, tmp_path):
    out = tmp_path / "out"
    r = itx("run", str(inputs / "astronaut.png"), str(inputs / "coffee.jpg"), "--out", str(out),
            "--profile", "tiny-random", "--captioners", "git", "--ocr", "none", "--size", "32x32",
            "--steps", "2", "--n", "2", "--model", f"generate:sd={flagging_sd}")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = manifest(out)
    assert [rec["flags"] for rec in recs] == [{"nsfw:output:0": True, "nsfw:output:1": True}] * 2
    assert all(rec["scores"] == {} for rec in recs)  # no --score: no scores


def test_score_without_generator_scores_captions(inputs, tmp_path):
    out = tmp_path / "out"
    r = itx("run", str(inputs / "coffee.jpg"), "--out", str(out), "--profile", "tiny-random",
            "--captioners", "git", "--generator", "none", "--score")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    (rec,) = manifest(out)
    assert set(rec["scores"]) == {"clip:caption:git", "clip:prompt"}
    assert "prompt_caption" not in rec  # only with `best`


def test_itx_submit_score_distributed(inputs, model_dir, tmp_path):
    """Real redis-server and `celery worker -Q light|heavy` processes; the heavy pool scores."""
    from tests.cluster import redis_server, workers

    store = tmp_path / "store"
    store.mkdir()
    with redis_server() as redis:
        env = {"ITX_BROKER_URL": redis.url + "/0", "ITX_RESULT_BACKEND": redis.url + "/1",
               "ITX_STORE": store.as_uri(), "ITX_PROFILE": "tiny-random",
               "ITX_MODEL_DIR": str(model_dir), "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1"}
        with workers(env, tag="score") as ws:
            r = itx("submit", str(inputs), "--batch", "scored", *OPTS, "--wait", env=env)
            assert r.returncode == 0, r.stdout + r.stderr[-3000:] + ws[1].output()[-3000:]
            heavy_log = ws[1].output()
    recs = [json.loads(p.read_text()) for p in (store / "runs/scored/results").glob("*.json")]
    assert len(recs) == 3
    for rec in recs:
        check_scored(rec)
    assert "itx.compose" in heavy_log and "itx.generate" in heavy_log
