"""Run every CPU benchmark, each in its own process, and merge the figures.

    python benchmarks/run.py --quick      # CI: all of them in well under 5 minutes
    python benchmarks/run.py              # longer runs, steadier figures
    python benchmarks/run.py --only stages,soak

Writes ``benchmarks/results.json``::

    {"stages": {"blip": {"ratio": 9.2, ...}, ...}, "overhead": {"ms_per_item": ...},
     "broker": {"bytes_per_item": ...}, "submit": {"items_per_s": ..., "peak_rss_mb": ...},
     "soak": {"rss_growth_pct": ...}, "reuse": {"second_over_first": ...}, "targets": {"stages.blip.ratio": {"value", "target",
     "met"}, ...}, "machine": {...}, "errors": {...}}

Figures are reported, not asserted: a missed target prints MISSED and the exit status is 0
(a benchmark that fails to run is reported as an error, also with exit status 0).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C

BENCHMARKS = ["stages", "overhead", "broker", "submit", "soak", "reuse", "staging", "score"]
# seconds each may take; --quick must finish all of them in under 5 minutes
LIMITS = {"quick": {"stages": 90, "overhead": 80, "broker": 80, "submit": 80, "soak": 80,
                    "reuse": 40, "staging": 20, "score": 40},
          "full": {"stages": 600, "overhead": 600, "broker": 600, "submit": 600, "soak": 600,
                   "reuse": 600, "staging": 20, "score": 600}}
# run here in their --quick variant only (the full one by hand: python benchmarks/staging.py)
QUICK_ONLY = {"staging"}
BUDGET_QUICK = 290


def run_one(name: str, quick: bool, timeout: float) -> tuple[dict | None, str | None, float]:
    """Run ``benchmarks/<name>.py`` in a fresh process; its figures come back as its JSON."""
    out = C.OUT / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).with_name(f"{name}.py"))]
    cmd += ["--quick"] if quick or name in QUICK_ONLY else []
    t = time.perf_counter()
    try:
        p = subprocess.run(cmd, cwd=C.REPO, timeout=timeout, check=False)
        err = None if p.returncode == 0 else f"exit status {p.returncode}"
    except subprocess.TimeoutExpired:
        err = f"did not finish in {timeout:.0f} s"
    secs = time.perf_counter() - t
    if err is None and not out.exists():
        err = "wrote no results"
    return (json.loads(out.read_text()) if err is None else None), err, secs


def targets(res: dict) -> dict:
    t = {}
    for name, r in (res.get("stages") or {}).items():
        if isinstance(r, dict) and "target" in r:
            t[f"stages.{name}.ratio"] = r["target"]
    if "overhead" in res:
        t["overhead.ms_per_item"] = res["overhead"]["target"]
    if "broker" in res:
        t["broker.bytes_per_item"] = res["broker"]["target"]
    if "submit" in res:
        t["submit.items_per_s"] = res["submit"]["targets"]["items_per_s"]
        t["submit.peak_rss_mb"] = res["submit"]["targets"]["peak_rss_mb"]
    if "staging" in res:
        t["staging.items_per_s"] = res["staging"]["targets"]["items_per_s"]
        t["staging.peak_rss_mb"] = res["staging"]["targets"]["peak_rss_mb"]
    if "soak" in res:
        t["soak.rss_growth_pct"] = res["soak"]["target"]
    if "reuse" in res:
        t["reuse.reused_share"] = res["reuse"]["target"]
    return t


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short CI variant (< 5 minutes)")
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",")] if a.only else BENCHMARKS
    limits = LIMITS["quick" if a.quick else "full"]
    t0 = time.perf_counter()
    res: dict = {"quick": a.quick, "machine": C.machine(), "errors": {}, "seconds": {}}
    for name in names:
        if name not in BENCHMARKS:
            res["errors"][name] = f"no such benchmark; choose from {', '.join(BENCHMARKS)}"
            continue
        left = BUDGET_QUICK - (time.perf_counter() - t0) if a.quick else limits[name]
        if left < 20:
            res["errors"][name] = "skipped: the --quick time budget is spent"
            continue
        C.console.rule(f"[bold]{name}")
        r, err, secs = run_one(name, a.quick, min(limits[name], left))
        res["seconds"][name] = round(secs, 1)
        if err:
            res["errors"][name] = err
            C.console.print(f"[bold red]{name}: {err}")
        elif name == "stages":
            res["stages"] = r["backends"]
            res["stages_settings"] = {k: v for k, v in r.items() if k != "backends"}
        else:
            res[name] = r
    res["targets"] = targets(res)
    res["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    path = C.REPO / "benchmarks" / "results.json"
    path.write_text(json.dumps(res, indent=1, default=str))

    rows = [[k, v["value"], v["target"], C.verdict(v)] for k, v in res["targets"].items()]
    rows += [[f"{k} (error)", "-", "-", f"[bold red]{e}"] for k, e in res["errors"].items()]
    C.table(f"itx benchmarks{' --quick' if a.quick else ''}: "
            f"{res['seconds']['total']:.0f} s on {res['machine'].get('cpus')} CPUs",
            ["figure", "value", "target", ""], rows)
    missed = [k for k, v in res["targets"].items() if not v["met"]]
    if missed or res["errors"]:
        C.console.print(f"MISSED: {', '.join(missed + list(res['errors']))}")
    C.console.print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
