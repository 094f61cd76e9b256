"""Several `itx` invocations in one interpreter: the console script's entry point
(``orchestrator.cli:main``) called once per argv in a single subprocess.

Use it where the CLI, the pipeline and the store are under test but process start-up is not:
torch and the models a run loads are imported and loaded once instead of once per run. Each
run still parses its own argv, exits through typer, and writes its own --out store (stage
reuse is per store, so no run sees another's results). Tests that are about the process
itself (exit status under signals, start-up, what a fresh process prints) use a real `itx`.

    r1, r2 = itx_runs([["run", src, "--out", a], ["run", src, "--out", b, "--chunk", "1"]])
    assert r1.returncode == 0, r1.stdout + r1.stderr
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARK = "\x1e=== itx run #"

_DRIVER = f"""
import json, sys
from orchestrator.cli import main

mark, out, argvs = {MARK!r}, sys.argv[1], json.loads(sys.argv[2])
codes = []
for i, argv in enumerate(argvs):
    sys.argv = ["itx", *argv]
    print(mark + str(i), flush=True)
    print(mark + str(i), file=sys.stderr, flush=True)
    try:
        main()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:  # a crash of one run is that run's failure; the others go on
        import traceback
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    codes.append(code)
    with open(out, "w") as f:
        json.dump(codes, f)
"""


def _split(text: str, n: int) -> list[str]:
    parts = [""] * n
    for chunk in text.split(MARK)[1:]:
        i, _, body = chunk.partition("\n")
        if i.isdigit() and int(i) < n:
            parts[int(i)] = body
    return parts


def itx_runs(argvs: list[list[str]], env: dict | None = None, timeout: float = 1800,
             cwd: Path | None = None) -> list[subprocess.CompletedProcess]:
    """One CompletedProcess per argv (returncode None: the interpreter died before that run
    ended; its stderr then holds the interpreter's last output)."""
    with tempfile.TemporaryDirectory(prefix="itx-runs-") as tmp:
        codes_file = Path(tmp) / "codes.json"
        e = {**os.environ, **(env or {})}
        e["PYTHONPATH"] = str(REPO) + os.pathsep + e.get("PYTHONPATH", "")
        # one torch thread, as the cluster tests' workers (tests/cluster.py): the suite runs
        # on two pytest workers over 2 cores, so more threads per process only contend
        e.setdefault("OMP_NUM_THREADS", "1")
        e.setdefault("MKL_NUM_THREADS", "1")
        p = subprocess.run([sys.executable, "-c", _DRIVER, str(codes_file), json.dumps(argvs)],
                           capture_output=True, text=True, timeout=timeout, check=False,
                           cwd=cwd or REPO, env=e)
        codes = json.loads(codes_file.read_text()) if codes_file.exists() else []
    outs, errs = _split(p.stdout, len(argvs)), _split(p.stderr, len(argvs))
    res = []
    for i, argv in enumerate(argvs):
        code = codes[i] if i < len(codes) else None
        err = errs[i] if code is not None else errs[i] + f"\n[interpreter exit {p.returncode}]\n" \
            + p.stderr[-3000:]
        res.append(subprocess.CompletedProcess(["itx", *argv], code, outs[i], err))
    return res
