"""What every benchmark shares: the environment (offline, CPU, tiny-random), test images,
process RSS, targets, a rich table and a JSON file per benchmark.

Each benchmark is a script (``python benchmarks/<name>.py [--quick]``) with a
``main(quick) -> dict`` that prints its table and writes ``benchmarks/out/<name>.json``;
``benchmarks/run.py`` runs them all, each in its own process, and merges the figures
into ``benchmarks/results.json``.
"""
from __future__ import annotations

import atexit
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "benchmarks" / "out"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# the same offline, CPU, tiny-random environment the tests use (tests/conftest.py)
os.environ.setdefault("ITX_MODEL_DIR", str(REPO / ".itx-models"))
os.environ.setdefault("ITX_PROFILE", "tiny-random")
os.environ.setdefault("ITX_DEVICE", "cpu")
for k, v in {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1",
             "TOKENIZERS_PARALLELISM": "false", "HF_HUB_DISABLE_PROGRESS_BARS": "1",
             "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
             "PYTHONWARNINGS": "ignore"}.items():
    os.environ.setdefault(k, v)

from rich.console import Console
from rich.table import Table

console = Console(highlight=False)

# The stage options of the cluster benchmarks: every light stage and a generator, all tiny.
SPEC_OPTS = ["--profile", "tiny-random", "--ocr", "rapidocr", "--captioners", "blip,git,vit-gpt2",
             "--vqa", "what is this?", "--generator", "sd", "--size", "64x64", "--steps", "4"]


def tmpdir(prefix: str) -> Path:
    """A scratch folder, removed when the benchmark's process exits (SIGTERM included: the
    benchmarks turn it into SystemExit)."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def worker_base_env(**extra) -> dict:
    """Environment of the worker processes and `itx` commands the cluster benchmarks start."""
    return {"ITX_PROFILE": "tiny-random", "ITX_MODEL_DIR": os.environ["ITX_MODEL_DIR"],
            "ITX_DEVICE": "cpu", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
            "TRANSFORMERS_VERBOSITY": "error", "DIFFUSERS_VERBOSITY": "error",
            "PYTHONWARNINGS": "ignore", **extra}


def spec_from_opts(opts: list[str]):
    """The PipelineSpec that `itx submit <opts>` builds (for the in-process baselines)."""
    from workers.spec import PipelineSpec

    o = dict(zip(opts[::2], opts[1::2]))
    return PipelineSpec(profile=o.get("--profile"), ocr=o.get("--ocr"),
                        captioners=o["--captioners"].split(",") if "--captioners" in o else None,
                        vqa=[o["--vqa"]] if "--vqa" in o else [], generator=o.get("--generator"),
                        steps=int(o["--steps"]) if "--steps" in o else None, size=o.get("--size"),
                        ).resolved(o.get("--profile") or "tiny-random")


# --- images --------------------------------------------------------------------------------
def photo(i: int, size=(96, 64)):
    """A deterministic small RGB test image: a smooth gradient, a few shapes and noise."""
    import numpy as np
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(i)
    w, h = size
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                     np.full_like(x, (i * 37) % 255)], -1)
    a = np.clip(base + rng.normal(0, 12, base.shape), 0, 255).astype("uint8")
    im = Image.fromarray(a, "RGB")
    d = ImageDraw.Draw(im)
    for _ in range(3):
        x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
        d.ellipse([x0, y0, x0 + int(rng.integers(6, w // 2)), y0 + int(rng.integers(6, h // 2))],
                  fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
    return im


def text_image(i: int, size=(240, 80)):
    """White card with a line of black text (something for the OCR engines to read)."""
    from PIL import Image, ImageDraw, ImageFont

    words = ["OPEN 24 HOURS", "STOP", "EXIT 12", "SALE 50%", "NO PARKING", "MAIN ST",
             "COFFEE", "BUS 42"]
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    try:
        font = ImageFont.load_default(size=28)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    d.text((10, 20), words[i % len(words)], fill="black", font=font)
    return im


def write_images(d: Path, n: int, start: int = 0, size=(64, 48)) -> list[Path]:
    d.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(start, start + n):
        p = d / f"img{i:06d}.png"
        photo(i, size).save(p)
        out.append(p)
    return out


# --- processes -----------------------------------------------------------------------------
def rss_mb(pid: int | None = None) -> float:
    """Resident set size of a process, in MB (from /proc)."""
    path = f"/proc/{pid or 'self'}/status"
    with open(path) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def machine() -> dict:
    info = {"cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


# --- targets, tables, JSON -------------------------------------------------------------------
def target(value, op: str, limit) -> dict:
    """A figure against its target: ``{"value", "target", "met"}`` (None counts as missed)."""
    met = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"value": value, "target": f"{op} {limit}", "met": bool(met)}


def verdict(t: dict) -> str:
    return "[green]met[/]" if t["met"] else "[bold red]MISSED[/]"


def table(title: str, columns: list[str], rows: list[list]) -> None:
    t = Table(title=title)
    for c in columns:
        t.add_column(c, justify="left" if c == columns[0] else "right")
    for r in rows:
        t.add_row(*[fmt(x) for x in r])
    console.print(t)


def fmt(x) -> str:
    if isinstance(x, float):
        return f"{x:,.0f}" if abs(x) >= 1000 else f"{x:.3g}" if abs(x) < 10 else f"{x:.1f}"
    return str(x)


def write(name: str, result: dict) -> Path:
    OUT.mkdir(parents=True, exist_ok=True)
    p = OUT / f"{name}.json"
    p.write_text(json.dumps(result, indent=1, default=str))
    return p


def cli(main) -> None:
    """``python benchmarks/<name>.py [--quick]``."""
    import argparse

    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="the short CI variant")
    a = ap.parse_args()
    exit_on_sigterm()
    main(quick=a.quick)


def exit_on_sigterm() -> None:
    """SIGTERM (run.py's time limit, `timeout`, CI) raises SystemExit, so the benchmark's
    ``finally`` blocks and context managers stop the servers and workers it started."""
    import signal

    def stop(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: clean-up must not be cut short
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.s = time.perf_counter() - self.t0
