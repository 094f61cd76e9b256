"""What OCR costs on photo-sized images, per engine, pool processes and thread settings.

Real engines on real-sized inputs: rapidocr with the PP-OCR models its wheel ships (the
light pool's default OCR; ``Det.limit_type=max``, ``Det.limit_side_len=960``, as
``workers/stages/ocr/rapidocr.py`` sets them) and easyocr's CRAFT detector and CRNN recogniser at
full width (EasyOCR's own network shapes; random weights, since no hub is reachable: the
compute is the real one, the text is not). Inputs: scikit-image's bundled photos, resized
to 512-1024 px on the long side, each with a line of sign text drawn in, so the
recogniser has something to read.

For each engine, the same images through itx's own backend (``Backend.__call__``) under:

- one pool process, one thread (what one worker process of a two-process pool gets);
- one pool process, two threads (onnxruntime ``intra_op_num_threads`` / torch threads);
- two pool processes, one thread each, the images split between them.

The figure is milliseconds per image: the wall time from the first process starting to
the last one finishing, over the images. Both processes are started and have their models
loaded (and warmed up on one image) before anything is timed.

    python benchmarks/ocr.py [--quick]
"""
from __future__ import annotations

import multiprocessing as mp
import os
import statistics
import time
from pathlib import Path

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    import common as C

PHOTOS = ["astronaut", "coffee", "rocket", "chelsea", "hubble_deep_field",
          "immunohistochemistry", "astronaut", "coffee"]
SIDES = [512, 640, 768, 896, 1024, 1024, 800, 960]
SIGNS = ["OPEN 24 HOURS", "EXIT 12", "NO PARKING", "MAIN ST", "SALE 50%", "BUS 42", "STOP",
         "COFFEE"]
# (pool processes, threads per process)
CONFIGS = [(1, 1), (1, 2), (2, 1)]


def photo(i: int, side: int):
    """scikit-image photo ``i`` with its long side ``side`` px and a sign drawn in."""
    import numpy as np
    import skimage.data
    from PIL import Image, ImageDraw, ImageFont

    a = getattr(skimage.data, PHOTOS[i % len(PHOTOS)])()
    if a.ndim == 2:
        a = np.stack([a] * 3, -1)
    im = Image.fromarray(a[..., :3].astype("uint8"), "RGB")
    scale = side / max(im.size)
    im = im.resize((round(im.width * scale), round(im.height * scale)), Image.BICUBIC)
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=max(16, side // 20))
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    text = SIGNS[i % len(SIGNS)]
    x, y = im.width // 10, im.height // 8
    box = d.textbbox((x, y), text, font=font)
    d.rectangle([box[0] - 8, box[1] - 6, box[2] + 8, box[3] + 6], fill="white")
    d.text((x, y), text, fill="black", font=font)
    return im


def write_easyocr_full(out: Path) -> Path:
    """EasyOCR's detector and recogniser at full width, random weights, in the layout the
    easyocr backend loads (``workers/models/tiny/ocr.py`` writes the same, narrow). The
    detector's output layer gets the tiny builder's gain and bias, so photos give boxes."""
    import torch
    from easyocr.model.vgg_model import Model

    from workers.models.tiny.ocr import SCORE_BIAS, SCORE_GAIN
    from workers.stages.ocr.easyocr import DETECTOR_FILE, EASYOCR_CONFIG, craft_net, easyocr_config

    out.mkdir(parents=True, exist_ok=True)
    cfg = easyocr_config("en")  # EasyOCR's english_g2 shapes: 256 channels, 256 hidden
    torch.manual_seed(0)
    det = craft_net(1.0).eval()
    with torch.no_grad():
        det.conv_cls[-1].weight.mul_(SCORE_GAIN)
        det.conv_cls[-1].bias.copy_(torch.tensor(SCORE_BIAS))
    torch.save(det.state_dict(), out / DETECTOR_FILE)
    rec_cfg = cfg["recognizer"]
    rec = Model(num_class=len(rec_cfg["character"]) + 1, **rec_cfg["network_params"])
    torch.save({f"module.{k}": v for k, v in rec.state_dict().items()}, out / rec_cfg["file"])
    (out / EASYOCR_CONFIG).write_text(__import__("json").dumps(cfg))
    return out


def _engines(easyocr_dir: str | None):
    """In a pool process: every (engine, threads) backend, loaded and warm."""
    import torch

    from workers.stages.ocr.easyocr import EasyOCR
    from workers.stages.ocr.rapidocr import RapidOCR

    out = {}
    warm = photo(0, 256)
    for threads in sorted({t for _, t in CONFIGS}):
        torch.set_num_threads(threads)  # rapidocr reads its onnxruntime threads from torch
        r = RapidOCR()
        r.load("builtin", "cpu", torch.float32)
        r([warm])
        out[("rapidocr", threads)] = r
    if easyocr_dir:
        e = EasyOCR()
        e.load(easyocr_dir, "cpu", torch.float32)
        e([warm])
        out["easyocr"] = e  # torch threads are set per run
    return out


def _pool_process(easyocr_dir, inbox, outbox) -> None:
    import torch

    engines = _engines(easyocr_dir)
    images = {}
    outbox.put(("ready", os.getpid()))
    while (job := inbox.get()) is not None:
        engine, threads, wanted = job  # wanted: [(photo index, long side px), ...]
        torch.set_num_threads(threads)
        b = engines[(engine, threads)] if engine == "rapidocr" else engines["easyocr"]
        todo = []
        for i, side in wanted:
            if (i, side) not in images:
                images[(i, side)] = photo(i, side)
            todo.append(images[(i, side)])
        t0 = time.monotonic()
        boxes = 0
        for im in todo:  # one image per call: what a chunk's mini-batch costs per image
            boxes += len(b([im])[0]["lines"])
        outbox.put(("done", t0, time.monotonic(), len(todo), boxes))


def main(quick: bool = False) -> dict:
    import torch

    torch.set_num_threads(1)
    n_rapid = 3 if quick else 8
    n_easy = 2 if quick else 8
    easy_sides = [512] * n_easy if quick else SIDES[:n_easy]
    sides = {"rapidocr": SIDES[:n_rapid], "easyocr": easy_sides}
    repeats = 1 if quick else 3
    tmp = C.tmpdir("itx-bench-ocr-")
    easy_dir = str(write_easyocr_full(tmp / "easyocr"))
    ctx = mp.get_context("spawn")  # a fresh interpreter: no torch threads inherited
    procs = []
    res: dict = {"images": {k: v for k, v in sides.items()}, "configs": CONFIGS,
                 "repeats": repeats, "rapidocr": {}, "easyocr": {}}
    try:
        for _ in range(max(p for p, _ in CONFIGS)):
            inbox, outbox = ctx.Queue(), ctx.Queue()
            p = ctx.Process(target=_pool_process, args=(easy_dir, inbox, outbox), daemon=True)
            procs.append((p, inbox, outbox))
        for p, _, _ in procs:
            p.start()
        for p, _, outbox in procs:
            msg = outbox.get(timeout=300)
            assert msg[0] == "ready", msg
        rows = []
        for engine in ("rapidocr", "easyocr"):
            n = len(sides[engine])
            for nproc, threads in CONFIGS:
                runs = []
                for _ in range(repeats):
                    share = [[(i, sides[engine][i]) for i in range(k, n, nproc)]
                             for k in range(nproc)]
                    for (p, inbox, _), idx in zip(procs, share):
                        inbox.put((engine, threads, idx))
                    got = [procs[k][2].get(timeout=600) for k in range(nproc)]
                    start = min(g[1] for g in got)
                    end = max(g[2] for g in got)
                    runs.append(((end - start) * 1000 / n, sum(g[4] for g in got) / n))
                ms = statistics.median(r[0] for r in runs)
                key = f"{nproc}proc_{threads}thread"
                res[engine][key] = {"ms_per_image": round(ms, 1),
                                    "spread_ms": [round(min(r[0] for r in runs), 1),
                                                  round(max(r[0] for r in runs), 1)],
                                    "images_per_s": round(1000 / ms, 2),
                                    "lines_per_image": round(runs[0][1], 1)}
                rows.append([engine, nproc, threads, ms, 1000 / ms, runs[0][1]])
            one = res[engine]["1proc_1thread"]["ms_per_image"]
            res[engine]["ms_per_image"] = one
            res[engine]["ms_per_image_2proc"] = res[engine]["2proc_1thread"]["ms_per_image"]
            res[engine]["ms_per_image_2thread"] = res[engine]["1proc_2thread"]["ms_per_image"]
            best = min((v["ms_per_image"], k) for k, v in res[engine].items()
                       if isinstance(v, dict))
            res[engine]["best"] = best[1]
            # what two threads buy one process, and what a second process buys
            res[engine]["speedup_2thread"] = round(one / res[engine]["ms_per_image_2thread"], 2)
            res[engine]["speedup_2proc"] = round(one / res[engine]["ms_per_image_2proc"], 2)
    finally:
        for p, inbox, _ in procs:
            try:
                inbox.put(None)
            except Exception:
                pass
        for p, _, _ in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
    C.table(f"ocr: ms per image on photos {min(SIDES)}-{max(SIDES)} px "
            f"({'quick: ' if quick else ''}rapidocr {n_rapid}, easyocr {n_easy} images "
            f"{'at 512 px' if quick else ''}), median of {repeats}",
            ["engine", "processes", "threads", "ms/image", "images/s", "lines/image"], rows)
    C.write("ocr", res)
    return res


if __name__ == "__main__":
    C.cli(main)
