"""Hand-made chunks sent straight to the worker pools through the broker, past every check
that ``itx submit`` makes: what a hostile or buggy client could put on the queue.

The chunk goes out as the orchestrator sends it (``orchestrator.workflow.chunk_canvas``), from
a separate process configured by ``env`` alone, exactly like ``itx submit``.
"""
from __future__ import annotations

import json
import subprocess
import sys

from tests.cluster import REPO, worker_env

_SCRIPT = r"""
import json, sys
from orchestrator.workflow import chunk_canvas
from workers.settings import get_settings
from workers.spec import PipelineSpec

c = json.loads(sys.stdin.read())
spec = PipelineSpec.model_validate(c["spec"]).resolved(get_settings().profile)
if c.get("n"):
    spec = spec.model_copy(update={"n": c["n"]})  # past the orchestrator's check
chunk = {"batch": c["batch"], "chunk": c["chunk"], "spec": spec.model_dump(mode="json"),
         "items": c["items"]}
res = chunk_canvas(chunk).apply_async()
print(json.dumps(res.get(timeout=c["timeout"], disable_sync_subtasks=False)))
"""


def send_chunk(env: dict, batch: str, items: list[dict], spec: dict | None = None,
               chunk: int = 0, n: int | None = None, timeout: float = 120) -> dict:
    """Send one chunk; returns its summary (``{"done", "failed", "ids", …}``) once written."""
    payload = {"batch": batch, "chunk": chunk, "spec": spec or {}, "items": items, "n": n,
               "timeout": timeout}
    r = subprocess.run([sys.executable, "-c", _SCRIPT], input=json.dumps(payload), text=True,
                       capture_output=True, env=worker_env(env), cwd=REPO, timeout=timeout + 60,
                       check=False)
    assert r.returncode == 0, r.stderr[-4000:]
    return json.loads(r.stdout.strip().splitlines()[-1])
