"""Run every CPU benchmark, each in its own process group, and merge the figures.

    python benchmarks/run.py --quick      # CI: all of them in about 3 minutes on 2 cores
    python benchmarks/run.py              # longer runs, steadier figures
    python benchmarks/run.py --only stages,soak

Writes ``benchmarks/results.json``::

    {"stages": {"blip": {"ratio": 9.2, ...}, ...}, "overhead": {"ms_per_item": ...},
     "broker": {"bytes_per_item": ...}, "submit": {"items_per_s": ..., "peak_rss_mb": ...},
     "soak": {...}, "ocr": {...}, "pipeline": {"model_busy_pct": ...},
     "targets": {"stages.blip.ratio": {"value", "target", "met"}, ...,
                 "submit.items_per_s": {"value": null, "met": false, "error": "did not ..."}},
     "machine": {...}, "errors": {...}, "seconds": {...}}

Every figure in ``FIGURES`` is in ``targets`` on every run: with its value, or with
``value: null`` and the reason (the benchmark failed, timed out, was not run).
Each benchmark runs in its own process group with a time limit; when it ends, fails or
runs out of time it is killed whole, with every server and worker it started
(``procs.kill_tree``), also when this runner itself gets SIGTERM (CI's ``timeout``).
Figures are reported, not asserted: a missed target prints MISSED and the exit status is 0
(also when a benchmark fails; 1 only when the runner itself was stopped).
"""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C
import procs

BENCHMARKS = ["stages", "ocr", "overhead", "broker", "submit", "soak", "pipeline", "reuse",
              "staging", "score"]
# seconds each may take (killed, whole, after that); the quick variants are sized to take
# well under half of their limit on 2 busy cores, the suite well under 200 s
LIMITS = {"quick": {"stages": 90, "ocr": 90, "overhead": 90, "broker": 80, "submit": 60,
                    "soak": 70, "pipeline": 90, "reuse": 60, "staging": 40, "score": 60},
          "full": dict.fromkeys(BENCHMARKS, 900)}
BUDGET_QUICK = 450  # CI runs the suite under `timeout 600`
# every figure results.json always has, per benchmark: (key, op, target); op None: reported.
# A figure whose benchmark failed (or was skipped) is there with value None and the reason.
FIGURES = {
    "stages": [(f"stages.{b}.ratio", ">=", 3.0) for b in ("blip", "git", "vit-gpt2", "blip-vqa")],
    "ocr": [(f"ocr.{e}.{f}", None, None) for e in ("rapidocr", "easyocr")
            for f in ("ms_per_image", "ms_per_image_2thread", "ms_per_image_2proc")],
    "overhead": [("overhead.ms_per_item", "<=", 5.0)],
    "broker": [("broker.bytes_per_item", "<=", 2048)],
    "submit": [("submit.items_per_s", ">=", 5000), ("submit.peak_rss_mb", "<=", 300)],
    "soak": [("soak.rss_growth_pct", "<=", 5.0)],
    "pipeline": [("pipeline.model_busy_pct", ">=", 90.0)],
    "reuse": [("reuse.reused_share", ">=", 1.0), ("reuse.second_over_first", None, None)],
    "staging": [("staging.items_per_s", ">=", 2000), ("staging.peak_rss_mb", "<=", 300)],
    "score": [("score.models.vit-b-32.item_cpu_ms", None, None),
              ("score.readback_cpu_ms_per_output", None, None)],
}
# run here in their --quick variant only (the full one by hand: python benchmarks/staging.py)
QUICK_ONLY = {"staging"}


class Stopped(Exception):
    """run.py itself got SIGTERM/SIGINT (CI's `timeout`, Ctrl-C)."""


def run_one(name: str, quick: bool, timeout: float) -> tuple[dict | None, str | None, float]:
    """Run ``benchmarks/<name>.py`` in a fresh process group; its figures come back as its
    JSON. On time-out, error or our own SIGTERM the benchmark and everything it started
    are killed (``procs.kill_tree``)."""
    out = C.OUT / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).with_name(f"{name}.py"))]
    cmd += ["--quick"] if quick or name in QUICK_ONLY else []
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=C.REPO, start_new_session=True)
    err = None
    try:
        rc = proc.wait(timeout)
        err = None if rc == 0 else f"exit status {rc}"
    except subprocess.TimeoutExpired:
        err = f"did not finish in {timeout:.0f} s (killed)"
    except Stopped:
        err = "the suite was stopped (SIGTERM) while it ran"
        raise
    finally:
        left = procs.kill_tree(proc)
        if left:
            C.console.print(f"[yellow]{name}: killed what it left running:[/] " + "; ".join(left))
            if err is None:
                err = f"left {len(left)} processes running (killed)"
        secs = time.perf_counter() - t
    if err is None and not out.exists():
        err = "wrote no results"
    return (json.loads(out.read_text()) if err is None else None), err, secs


def lookup(res: dict, key: str):
    v = res
    for part in key.split("."):
        if not isinstance(v, dict) or part not in v:
            return None
        v = v[part]
    return v if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def figures(res: dict, names: list[str]) -> dict:
    """Every figure of every benchmark asked for: value, target, met, and the reason when
    there is no value."""
    out = {}
    for name in names:
        for key, op, limit in FIGURES.get(name, []):
            value = lookup(res, key)
            f = C.target(value, op, limit) if op else {"value": value, "target": None,
                                                        "met": None}
            if value is None:  # why: the benchmark's error, or the part's own (a backend)
                parent = res
                for part in key.split(".")[:-1]:
                    parent = parent.get(part) if isinstance(parent, dict) else None
                f["error"] = res["errors"].get(name) or (
                    parent.get("error") if isinstance(parent, dict) else None) or "no figure"
            out[key] = f
    return out


def main() -> int:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="the short CI variant (< 5 minutes)")
    ap.add_argument("--only", help="comma-separated subset of " + ",".join(BENCHMARKS))
    ap.add_argument("--limit", type=float, help="seconds each benchmark may take (override)")
    a = ap.parse_args()
    names = [n.strip() for n in a.only.split(",")] if a.only else BENCHMARKS
    limits = LIMITS["quick" if a.quick else "full"]
    if a.limit:
        limits = dict.fromkeys(BENCHMARKS, a.limit)
    procs.become_subreaper()  # orphans of a killed benchmark come back to us, to be killed

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        raise Stopped(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    t0 = time.perf_counter()
    res: dict = {"quick": a.quick, "machine": C.machine(), "errors": {}, "seconds": {}}
    stopped = None
    for name in names:
        if name not in BENCHMARKS:
            res["errors"][name] = f"no such benchmark; choose from {', '.join(BENCHMARKS)}"
            continue
        if stopped:
            res["errors"][name] = f"not run: the suite was stopped ({stopped})"
            continue
        left = BUDGET_QUICK - (time.perf_counter() - t0) if a.quick else limits[name]
        if left < 20:
            res["errors"][name] = "not run: the --quick time budget is spent"
            continue
        C.console.rule(f"[bold]{name}")
        try:
            r, err, secs = run_one(name, a.quick, min(limits[name], left))
        except Stopped as e:
            stopped = str(e)
            res["errors"][name] = f"stopped ({stopped}) while it ran; killed"
            continue
        res["seconds"][name] = round(secs, 1)
        if err:
            res["errors"][name] = err
            C.console.print(f"[bold red]{name}: {err}")
        elif name == "stages":
            res["stages"] = r["backends"]
            res["stages_settings"] = {k: v for k, v in r.items() if k != "backends"}
        else:
            res[name] = r
    res["targets"] = figures(res, [n for n in names if n in BENCHMARKS])
    res["seconds"]["total"] = round(time.perf_counter() - t0, 1)
    path = C.REPO / "benchmarks" / "results.json"
    path.write_text(json.dumps(res, indent=1, default=str))

    def shown(v):
        return ("reported" if v["met"] is None else C.verdict(v)) if v["value"] is not None \
            else f"[bold red]no figure: {v['error']}"

    rows = [[k, "-" if v["value"] is None else v["value"], v["target"] or "-", shown(v)]
            for k, v in res["targets"].items()]
    rows += [[f"{k} (error)", "-", "-", f"[bold red]{e}"] for k, e in res["errors"].items()
             if k not in BENCHMARKS]
    C.table(f"itx benchmarks{' --quick' if a.quick else ''}: "
            f"{res['seconds']['total']:.0f} s on {res['machine'].get('cpus')} CPUs",
            ["figure", "value", "target", ""], rows)
    missed = [k for k, v in res["targets"].items() if v["met"] is False]
    if missed or res["errors"]:
        C.console.print(f"MISSED: {', '.join(missed)}" if missed else "")
        for k, e in res["errors"].items():
            C.console.print(f"[bold red]{k}: {e}")
    C.console.print(f"results: {path}")
    return 1 if stopped else 0


if __name__ == "__main__":
    sys.exit(main())
