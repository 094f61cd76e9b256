"""``gpu.py --pipeline``: the default stages end to end on one card, in this process.

Embedded mode (``orchestrator.embedded.run``: the Celery canvas run eagerly, a file:// store):
rapidocr OCR, blip, git and vit-gpt2 captions, blip-vqa answers, Stable Diffusion 1.5
text-to-image at 512² and 25 steps, over N photos. The models are gpu.py's full-size
architectures with random weights, written to a temp dir and named by path in the spec's
model overrides (``--model STAGE:BACKEND=PATH``; the temp dir is an ``ITX_MODEL_ROOTS`` entry,
so the trust rules allow it). A warm-up batch of a few other photos loads every model first.

Figures: items/s end to end (the measured batch's wall time, models warm), GPU-busy % from
NVML (``torch.cuda.utilization()`` sampled every 0.1 s in a thread; absent without pynvml),
model-busy % (seconds inside backends' model calls, ``workers/stages/base.py``'s
``model_seconds``, over wall time) and each stage's ms per item from the records. ``--smoke``:
tiny widths, 64² 2 steps, 16 photos, any device. ``ITX_*`` settings in the environment apply
(e.g. ``ITX_GENERATE_COMPILE=denoiser``); the JSON lists the fast-path ones. Captions are
forced to gpu.py's 20 new tokens; each prompt is gpu.py's prompt and the blip caption.
"""
from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import gpu  # benchmarks/gpu.py: the checkpoints' configs, photos()

CAPTIONERS = ["blip", "git", "vit-gpt2"]
QUESTION = "what is in the picture?"


def inputs(folder: Path, n: int, start: int = 0) -> Path:
    """``n`` distinct photos as JPEG files: scikit-image's, each cropped and scaled its own
    way (gpu.photos()' noise where scikit-image is missing)."""
    import numpy as np
    from PIL import Image

    try:
        from skimage import data

        base = [Image.fromarray(getattr(data, k)()).convert("RGB")
                for k in ("astronaut", "coffee", "chelsea", "rocket", "camera", "cat")]
    except ImportError:
        base = gpu.photos(6)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(start)
    for i in range(start, start + n):
        im = base[i % len(base)]
        w, h = im.size
        x, y = int(rng.integers(0, w // 4)), int(rng.integers(0, h // 4))
        side = int(rng.integers(256, 641))
        im.crop((x, y, w - x // 2, h - y // 2)).resize((side, side * 3 // 4)).save(
            folder / f"{i:05d}.jpg", quality=90)
    return folder


def checkpoints(root: Path, device: str, smoke: bool) -> dict[str, str]:
    """The default stages' full-size (smoke: tiny-width) checkpoints; ``stage:backend -> path``."""
    import torch

    refs = {}
    for name in CAPTIONERS + ["blip-vqa"]:
        # every caption as long as gpu.py's (answers: the VQA backend's 10 tokens at most)
        path, _ = gpu.write_captioner(name, root, device, smoke,
                                      min_new_tokens=None if name == "blip-vqa" else gpu.NEW_TOKENS)
        refs[f"{'vqa' if name == 'blip-vqa' else 'caption'}:{name}"] = str(path)
    pipe, _ = gpu.sd_pipe(device, torch.float16 if device != "cpu" else torch.float32, smoke)
    pipe.save_pretrained(root / "sd")
    refs["generate:sd"] = str(root / "sd")
    del pipe
    gpu.free()
    return refs


class Busy:
    """GPU utilisation (NVML, via torch.cuda.utilization) sampled every 0.1 s in a thread."""

    def __init__(self):
        self.samples: list[int] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        import torch

        while not self._stop.wait(0.1):
            try:
                self.samples.append(int(torch.cuda.utilization()))
            except Exception as e:  # noqa: BLE001 - no pynvml / NVML: say so in the JSON
                self.error = f"{type(e).__name__}: {e}"[:200]
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(5)

    def pct(self) -> float | None:
        return round(sum(self.samples) / len(self.samples), 1) if self.samples else None


def bench_pipeline(a, device: str, half, root: Path, console) -> dict:
    n = 16 if a.smoke else a.pipeline_images
    chunk = 8 if a.smoke else a.pipeline_chunk
    models = root / "models"
    t = time.perf_counter()
    refs = checkpoints(models, device, a.smoke)
    build_s = time.perf_counter() - t
    os.environ["ITX_MODEL_ROOTS"] = str(models)  # the operator's roots: these paths are allowed
    os.environ.setdefault("ITX_DEVICE", "auto")
    from orchestrator.embedded import run
    from workers.settings import get_settings, reset_settings
    from workers.spec import PipelineSpec
    from workers.stages import base

    reset_settings()
    s = get_settings()
    size, steps = ("64x64", 2) if a.smoke else (f"{gpu.SD_SIZE}x{gpu.SD_SIZE}", a.steps)
    spec = PipelineSpec(profile="base", ocr="rapidocr", captioners=CAPTIONERS, vqa=[QUESTION],
                        vqa_backend="blip-vqa", generator="sd", size=size, steps=steps,
                        models=refs, reuse=False,
                        # random captions may decode to nothing: the prompt never is empty
                        edits=[f"template:{gpu.PROMPT}, {{caption}}"])
    out = {"items": n, "chunk": chunk, "size": size, "steps": steps, "device": device,
           "dtype": str(half), "stages": ["ocr:rapidocr", *(f"caption:{c}" for c in CAPTIONERS),
                                          "vqa:blip-vqa", "generate:sd"],
           "build_s": round(build_s, 1),
           "settings": {k: getattr(s, k) for k in ("device", "dtype", "generate_fuse_qkv",
                                                   "generate_channels_last", "generate_compile",
                                                   "generate_compile_mode",
                                                   "caption_static_cache", "caption_compile")}}
    # 1. warm-up: other photos, every model loaded (and compiled, where settings say so)
    t = time.perf_counter()
    run([str(inputs(root / "warm", min(chunk, 8), start=10_000))], spec, root / "out",
        batch="warm", chunk=chunk)
    out["warm_up_s"] = round(time.perf_counter() - t, 1)
    # 2. the measured batch
    folder = inputs(root / "in", n)
    model_before = base.model_seconds
    gpu.sync()
    with Busy() as busy:
        t = time.perf_counter()
        records = run([str(folder)], spec, root / "out", batch="bench", chunk=chunk)
        gpu.sync()
        wall = time.perf_counter() - t
    stage_ms: dict[str, float] = {}
    for r in records:
        for k, v in (r.get("timings_ms") or {}).items():
            stage_ms[k] = stage_ms.get(k, 0.0) + (v or 0.0)
    failed = [r for r in records if r.get("error")]
    out.update(
        records=len(records), failed=len(failed),
        first_error=failed[0]["error"][:300] if failed else None,
        with_outputs=sum(1 for r in records if r.get("outputs")),
        with_captions=sum(1 for r in records if len(r.get("captions") or {}) == len(CAPTIONERS)),
        with_answers=sum(1 for r in records if QUESTION in (r.get("vqa") or {})),
        with_ocr=sum(1 for r in records if r.get("ocr") is not None),
        wall_s=round(wall, 2), items_per_s=round(n / wall, 3),
        model_busy_pct=round(100 * (base.model_seconds - model_before) / wall, 1),
        gpu_busy_pct=busy.pct() if device.startswith("cuda") else None,
        gpu_busy_samples=len(busy.samples),
        stage_ms_per_item={k: round(v / max(1, len(records)), 1) for k, v in stage_ms.items()})
    if device.startswith("cuda") and busy.error:
        out["gpu_busy_error"] = busy.error
    if len(records) != n:
        out["error"] = f"{len(records)} records for {n} items"
    elif failed:
        out["error"] = f"{len(failed)} items failed: {failed[0]['error'][:200]}"
    console.print(f"pipeline: {n} items, {out['items_per_s']} items/s end to end, GPU busy "
                  f"{out['gpu_busy_pct']} %, model busy {out['model_busy_pct']} %, "
                  f"{out['failed']} failed; ms per item by stage: {out['stage_ms_per_item']}")
    return out
