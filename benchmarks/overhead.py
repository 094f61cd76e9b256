"""Orchestration overhead: N items through `itx submit` on a real cluster against direct
in-process calls of the very same stage functions on the same chunks.

Cluster: a dedicated redis-server, one light and one heavy `celery -A workers worker`
(concurrency 1, one torch thread each), a file:// store, `itx submit --wait --chunk 32`.
Direct: ``workers.pipeline`` functions called in this process (one torch thread) on the
chunks that submission wrote, models already loaded, the same store.

Timings come from the store: a batch's span is from its ``batch.json`` ``created`` to the
last record's ``finished_at`` (so interpreter start-up of the CLI is not counted, and the
CLI's one-second progress polling is not either). Models are loaded and warm in both.

Runs of the same N images: the light stages only (rapidocr, three captioners, VQA), three
times (five in full), and every stage (plus Stable Diffusion on the heavy pool) once. The
light figure is the median over the runs of (cluster - direct), with its spread. The target figure, milliseconds the
queue adds per item, is the light-only one: there the cluster does exactly the direct
run's work in one worker process, so the difference is the orchestration (messages, result
backend, chord, stage hand-offs through the store, acks, events). With a generator the two
pools work at once, so the cluster can beat the serial direct run; that run is reported
against both the serial time and the ideal two-pool pipeline,
``max(light, heavy) + min(light, heavy) / chunks``.

    python benchmarks/overhead.py [--quick]
"""
from __future__ import annotations

import json
import statistics
import subprocess
import time
from pathlib import Path

try:
    from benchmarks import common as C
except ImportError:  # run as a script
    import common as C

CHUNK = 32
TARGET_MS = 5.0


def itx(env: dict, *args, timeout: float = 600) -> subprocess.CompletedProcess:
    from tests.cluster import BIN, REPO, worker_env

    p = subprocess.run([str(BIN / "itx"), *args], env=worker_env(env), capture_output=True,
                       text=True, timeout=timeout, cwd=REPO, check=False)
    if p.returncode not in (0, 1):
        raise RuntimeError(f"itx {' '.join(args[:2])} failed ({p.returncode}):\n"
                           f"{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return p


def batch_span(store_root: Path, batch: str) -> tuple[float, int, int]:
    """(seconds from batch creation to its last record, records, failed records)."""
    created = json.loads((store_root / "runs" / batch / "batch.json").read_text())["created"]
    last, n, failed = created, 0, 0
    for p in (store_root / "runs" / batch / "results").glob("*.json"):
        r = json.loads(p.read_text())
        last = max(last, r.get("finished_at") or 0)
        n += 1
        failed += bool(r.get("error"))
    return last - created, n, failed


def ledger_chunks(store_root: Path, batch: str) -> list[dict]:
    return [json.loads(p.read_text())
            for p in sorted((store_root / "runs" / batch / "chunks").glob("*.json"))]


def direct(chunks: list[dict], batch: str) -> dict:
    """Run every stage of every chunk in this process; per-pool seconds."""
    from workers.pipeline.compose import compose
    from workers.pipeline.generate import generate
    from workers.pipeline.run import header_stages, run_stage
    from workers.pipeline.write import finish
    from workers.records import Chunk

    light = heavy = 0.0
    for c in chunks:
        c = Chunk(batch=batch, chunk=c["chunk"], spec=c["spec"], items=c["items"])
        t = time.perf_counter()
        parts = [run_stage(c, stage, name) for stage, name in header_stages(c.spec, c.items)]
        state = compose(parts, c)
        light += time.perf_counter() - t
        t = time.perf_counter()
        if c.spec.generator:
            generate(state)
        finish(state)
        heavy += time.perf_counter() - t
    return {"light_s": light, "heavy_s": heavy}


def light_opts() -> list[str]:
    """The same stages without a generator: the light pool only."""
    o = list(C.SPEC_OPTS)
    o[o.index("--generator") + 1] = "none"
    return o


def main(quick: bool = False) -> dict:
    import os

    import torch

    from tests.cluster import redis_server, workers
    from workers.settings import reset_settings

    n = 96 if quick else 512
    repeats = 3 if quick else 5  # light runs, cluster and direct alternated: median, spread
    tmp = C.tmpdir("itx-bench-overhead-")
    store = tmp / "store"
    C.write_images(tmp / "warm", CHUNK, start=10_000)
    C.write_images(tmp / "in", n)
    specs = {"light": [*light_opts(), "--chunk", str(CHUNK)],
             "full": [*C.SPEC_OPTS, "--chunk", str(CHUNK)]}
    res: dict = {"n": n, "chunk": CHUNK, "spec": {k: v for k, v in specs.items()}}
    cluster: dict = {}
    with redis_server() as redis:
        # no gc: the direct runs below replay the very chunk ledgers the cluster was given
        env = C.worker_base_env(ITX_BROKER_URL=redis.url + "/0",
                                ITX_RESULT_BACKEND=redis.url + "/1", ITX_STORE=store.as_uri(),
                                ITX_AUTO_GC="false")
        with workers(env, tag="bench") as ws:
            itx(env, "submit", str(tmp / "warm"), "--batch", "warm", "--wait", *specs["full"])
            runs = [(f"light{k}", specs["light"]) for k in range(repeats)]
            for kind, opts in [*runs, ("full", specs["full"])]:
                t = time.perf_counter()
                p = itx(env, "submit", str(tmp / "in"), "--batch", kind, "--wait", *opts)
                cli_s = time.perf_counter() - t
                span, done, failed = batch_span(store, kind)
                if done != n or failed:
                    raise RuntimeError(f"{kind} run wrote {done} records ({failed} failed) of "
                                       f"{n}:\n{p.stdout[-2000:]}")
                cluster[kind] = {"s": span, "cli_s": cli_s}
            worker_rss = {w.name: [round(C.rss_mb(pid), 1) for pid in C.children(w.proc.pid)]
                          for w in ws}

    # direct, in this process, on the very chunks each cluster run was given, one torch
    # thread like each worker process, models loaded and warm
    os.environ["ITX_STORE"] = store.as_uri()
    reset_settings()
    torch.set_num_threads(1)
    direct(ledger_chunks(store, "warm"), "direct-warm")
    d_lights = [direct(ledger_chunks(store, f"light{k}"), f"direct-light{k}")["light_s"]
                for k in range(repeats)]
    d = direct(ledger_chunks(store, "full"), "direct-full")
    nchunks = len(ledger_chunks(store, "full"))
    direct_s = d["light_s"] + d["heavy_s"]
    lo, hi = sorted([d["light_s"], d["heavy_s"]])
    pipeline_s = hi + lo / nchunks
    # run k of the cluster against run k of the direct calls (the same chunks); the figure
    # is the median of the differences, the spread their range (the machine is shared)
    added = sorted((cluster[f"light{k}"]["s"] - d_lights[k]) * 1000 / n
                   for k in range(repeats))
    mid = statistics.median(added)
    lc = statistics.median(cluster[f"light{k}"]["s"] for k in range(repeats))
    light_direct_s = statistics.median(d_lights)
    fc = cluster["full"]["s"]

    res.update({
        # the target: what the queue adds per item where nothing runs in parallel
        "ms_per_item": round(mid, 2),
        "ms_per_item_runs": [round(x, 2) for x in added],
        "ms_per_item_spread": [round(added[0], 2), round(added[-1], 2)],
        "repeats": repeats,
        "light": {"cluster_s": round(lc, 3), "direct_s": round(light_direct_s, 3),
                  "cluster_items_per_s": round(n / lc, 1),
                  "direct_items_per_s": round(n / light_direct_s, 1),
                  "cli_wall_s": round(cluster["light0"]["cli_s"], 2)},
        "full": {"cluster_s": round(fc, 3), "direct_s": round(direct_s, 3),
                 "direct_light_s": round(d["light_s"], 3), "direct_heavy_s": round(d["heavy_s"], 3),
                 "pipeline_s": round(pipeline_s, 3),
                 "cluster_items_per_s": round(n / fc, 1),
                 "direct_items_per_s": round(n / direct_s, 1),
                 "added_ms_per_item_vs_serial": round((fc - direct_s) * 1000 / n, 2),
                 "added_ms_per_item_vs_pipeline": round((fc - pipeline_s) * 1000 / n, 2),
                 "cli_wall_s": round(cluster["full"]["cli_s"], 2)},
        "cluster_items_per_s": round(n / fc, 1), "direct_items_per_s": round(n / direct_s, 1),
        "worker_rss_mb": worker_rss,
    })
    res["target"] = C.target(res["ms_per_item"], "<=", TARGET_MS)
    f = res["full"]
    C.table(f"overhead: {n} items, chunk {CHUNK}, 1 light + 1 heavy worker, file:// store "
            f"(light: medians of {repeats})",
            ["run", "seconds", "items/s", "ms/item"],
            [["light stages, direct (in-process)", light_direct_s, n / light_direct_s,
              light_direct_s * 1000 / n],
             ["light stages, cluster (itx submit)", lc, n / lc, lc * 1000 / n],
             ["every stage, direct serial", direct_s, n / direct_s, direct_s * 1000 / n],
             ["  of which light", d["light_s"], n / d["light_s"], d["light_s"] * 1000 / n],
             ["  of which heavy", d["heavy_s"], n / d["heavy_s"], d["heavy_s"] * 1000 / n],
             ["every stage, ideal two-pool pipeline", pipeline_s, n / pipeline_s,
              pipeline_s * 1000 / n],
             ["every stage, cluster (itx submit)", fc, n / fc, fc * 1000 / n]])
    C.table("added per item by the queue", ["figure", "ms/item", f"target <= {TARGET_MS:g}"],
            [[f"light stages: cluster - direct (median of {repeats}; "
              f"{added[0]:.2f} .. {added[-1]:.2f})", res["ms_per_item"],
              C.verdict(res["target"])],
             ["every stage: cluster - direct serial", f["added_ms_per_item_vs_serial"],
              "(reported)"],
             ["every stage: cluster - ideal pipeline", f["added_ms_per_item_vs_pipeline"],
              "(reported)"]])
    C.write("overhead", res)
    return res


if __name__ == "__main__":
    C.cli(main)
