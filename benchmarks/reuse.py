"""Stage reuse: what a second batch over the same images costs when only an edit rule changed.

Embedded mode (the same tasks, in this process), tiny-random models, one torch thread, one
file:// store. A warm-up run over other images loads every model first, so both measured
batches find them warm. Batch 1 runs OCR (rapidocr), two captioners, VQA and (full run) the
generator over N images; batch 2 is the same images and spec with one more edit rule, so
its item ids differ (nothing is "already done") and only the stage outputs can be reused.
Then batch 3 repeats batch 2's rule with ``reuse=False`` (``--no-reuse``).

Figures: seconds of each batch, batch 2 / batch 1, and the share of header stages batch 2
took from ``reuse/`` (target: all of them, 1.0).

    python benchmarks/reuse.py [--quick]      # --quick: 12 images, blip + VQA, < 20 s
"""
from __future__ import annotations

import os
import time

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    import common as C


def main(quick: bool = False) -> dict:
    os.environ.setdefault("ITX_PROFILE", "tiny-random")
    os.environ.setdefault("ITX_DEVICE", "cpu")
    os.environ.setdefault("ITX_MODEL_DIR", str(C.REPO / ".itx-models"))
    import torch

    torch.set_num_threads(1)
    from orchestrator.embedded import run
    from workers.spec import PipelineSpec

    n = 12 if quick else 64
    gen = dict(generator="none") if quick else dict(generator="sd", size="32x32", steps=2)
    stages = dict(ocr="none", captioners=["blip"]) if quick else \
        dict(ocr="rapidocr", captioners=["blip", "git"])
    base = dict(profile="tiny-random", vqa=["what is this?"], edits=["template:{caption}"],
                **stages, **gen)
    tmp = C.tmpdir("itx-bench-reuse-")
    C.write_images(tmp / "warm", 2, start=90_000)
    C.write_images(tmp / "in", n)
    out = tmp / "out"

    def timed(batch, images, **kw):
        spec = PipelineSpec(**{**base, **kw})
        t = time.perf_counter()
        recs = run([str(images)], spec, out, batch=batch, chunk=16)
        return time.perf_counter() - t, recs

    timed("warm", tmp / "warm")
    t1, r1 = timed("first", tmp / "in")
    edits = base["edits"] + ["style:watercolor"]
    t2, r2 = timed("second", tmp / "in", edits=edits)
    t3, r3 = timed("no-reuse", tmp / "in", edits=edits, reuse=False)
    stages = len(r2[0]["models"]) - (1 if base["generator"] != "none" else 0)
    reused = sum(len(r["reused"]) for r in r2) / max(1, stages * len(r2))
    assert not [r for r in r1 + r2 + r3 if r["error"]], "a record failed"
    res = {"items": n, "generator": base["generator"], "first_s": round(t1, 2),
           "second_s": round(t2, 2), "no_reuse_s": round(t3, 2),
           "second_over_first": round(t2 / t1, 3), "reused_share": round(reused, 3),
           "first_ms_per_item": round(1000 * t1 / n, 1),
           "second_ms_per_item": round(1000 * t2 / n, 1),
           "reused_stages": sorted(r2[0]["reused"])}
    res["target"] = C.target(res["reused_share"], ">=", 1.0)
    C.table(f"stage reuse: {n} images, {stages} header stages, generator {base['generator']}",
            ["batch", "seconds", "ms/item", "stages reused"],
            [["first (computes everything)", t1, res["first_ms_per_item"], 0],
             ["second (one more edit rule)", t2, res["second_ms_per_item"],
              f"{reused:.0%} {C.verdict(res['target'])}"],
             ["third (the same, --no-reuse)", t3, 1000 * t3 / n,
              f"{sum(len(r['reused']) for r in r3)}"]])
    C.write("reuse", res)
    return res


if __name__ == "__main__":
    C.cli(main)
