"""The short table at the end of ``gpu_check.sh``: issue 15's figures from the ``gpu-*.json``
files in a folder, each beside its target or published reference.

    python benchmarks/gpu_summary.py benchmarks/out
"""
from __future__ import annotations

import json
import sys
from pathlib import Path


def load(folder: Path) -> dict:
    """Every model's figures from every gpu-*.json (a later file adds its variants)."""
    models: dict[str, dict] = {}
    for f in sorted(folder.glob("gpu-*.json")):
        try:
            res = json.loads(f.read_text())
        except (OSError, ValueError):
            continue
        models.setdefault("_card", {"card": res.get("machine", {}).get("card")})
        if "pipeline" in res:
            models["pipeline"] = res["pipeline"]
        for name, r in res.get("models", {}).items():
            m = models.setdefault(name, {})
            best = [x for x in (m.get("best_items_per_s"), r.get("best_items_per_s")) if x]
            fast = {**m.get("fast", {}), **r.get("fast", {})}
            sweep = {**m.get("batch_sizes", {}), **r.get("batch_sizes", {})}
            m.update(r)
            if sweep:
                m["batch_sizes"] = sweep
            if fast:
                m["fast"] = fast
            if best:
                m["best_items_per_s"] = max(best)
    return models


def best_variant(r: dict) -> str:
    sweep = r.get("batch_sizes", {})
    name, val = (f"batch {max(sweep, key=sweep.get)}", max(sweep.values())) if sweep else ("", 0)
    for v, f in r.get("fast", {}).items():
        if isinstance(f, dict) and f.get("items_per_s", 0) > val:
            name, val = f"{v} at batch {r['fast'].get('batch_size')}", f["items_per_s"]
    return name


def rows(m: dict) -> list[tuple[str, str, str]]:
    out = []
    sd, blip = m.get("sd", {}), m.get("blip", {})
    if "best_items_per_s" in sd:
        out.append((f"SD 1.5 {sd.get('size')}² {sd.get('steps')} steps, images/s", (f"{sd['best_items_per_s']} "
                    f"({best_variant(sd)})"), "target >= 10"))
        b1 = [f"eager {sd.get('half_batch1_it_per_s')}"] + [
            f"{v} {f['batch1_it_per_s']}" for v, f in sd.get("fast", {}).items()
            if isinstance(f, dict) and "batch1_it_per_s" in f]
        out.append(("SD 1.5 batch-1 it/s", ", ".join(b1),
                    "fal A100: 31.19 SDPA, 47.29 compiled + channels-last"))
    if "best_items_per_s" in blip:
        out.append(("BLIP-base captions/s (20 tokens)", (f"{blip['best_items_per_s']} "
                    f"({best_variant(blip)})"), "target >= 500"))
    p = m.get("pipeline")
    if p:
        out.append((f"pipeline, {p.get('items')} items, items/s", str(p.get("items_per_s")),
                    (f"GPU busy {p.get('gpu_busy_pct')} %, model busy {p.get('model_busy_pct')} %"
                    f", {p.get('failed')} failed")))
    for name, ref in (("sdxl", "MLPerf H100 ~2.3 images/s (20 steps); fal A100 8.43 it/s"),
                      ("flux-schnell", "no published figure at hand")):
        r = m.get(name, {})
        if "batched_items_per_s" in r:
            out.append((f"{name} {r.get('size')}² {r.get('steps')} steps, images/s (batch 1 it/s)",
                        f"{r['batched_items_per_s']} ({r.get('half_batch1_it_per_s')})", ref))
        elif "error" in r:
            out.append((name, "error: " + r["error"][:60], ref))
    return out


def main(folder: str) -> int:
    m = load(Path(folder))
    if not m:
        print(f"no gpu-*.json in {folder}")
        return 1
    print(f"\nissue 15 figures, {m.get('_card', {}).get('card')}:")
    table = rows(m)
    w = max((len(r[0]) for r in table), default=10)
    v = max((len(r[1]) for r in table), default=10)
    for name, val, ref in table:
        print(f"  {name:<{w}}  {val:<{v}}  {ref}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/out"))
