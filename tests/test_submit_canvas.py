"""Submission sends a chunk's canvas without building and copying it (``send_chunk``): the
messages that reach the broker and the chord set-up in the result backend must be the ones
``chunk_canvas(chunk).apply_async()`` gives, ids aside. Checked against a real redis-server,
one publish at a time and through the submitter's batched path (``_Sender``), for a chord
with a compose | generate body and one with compose alone."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.cluster import REPO, redis_server

SCRIPT = r'''
import base64, json, re, sys, tempfile, zlib
import redis
from workers.app import app
from workers.records import Chunk, Item
from workers.spec import PipelineSpec
from workers.storage import FileStore
from orchestrator.batch import Batch
from orchestrator.submit import _Sender
from orchestrator.workflow import chunk_canvas, send_chunk

broker, backend = (redis.Redis.from_url(u) for u in (app.conf.broker_url, app.conf.result_backend))
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")

def normalized(text, ids):
    return UUID.sub(lambda m: "<id%d>" % ids.setdefault(m.group(0), len(ids)), text)

def state():
    """Every message in every queue (bodies decoded) and every result-backend key with its
    value and whether it expires, uuids numbered in order of first appearance."""
    ids, out = {}, []
    for q in sorted(k for k in broker.keys() if broker.type(k) == b"list"):
        for raw in broker.lrange(q, 0, -1):
            m = json.loads(raw)
            body = base64.b64decode(m.pop("body"))
            if m["headers"].get("compression") == "application/x-gzip":
                body = zlib.decompress(body)
            m["body"] = json.loads(body)
            out.append([q.decode(), json.dumps(m, sort_keys=True)])
    text = normalized(json.dumps(out), ids)  # the messages number the ids first
    keys = sorted(normalized(json.dumps([k.decode(), backend.get(k).decode(), backend.ttl(k) > 0]),
                             ids) for k in backend.keys())
    broker.flushdb()
    backend.flushdb()
    return text + "\n" + "\n".join(keys), len(ids)

store = FileStore(tempfile.mkdtemp())
batch = Batch("canvas1", store, app)
report = {}
for gen in ("sd", None):
    spec = PipelineSpec(profile="tiny-random", ocr="rapidocr", captioners=["blip", "git"],
                        vqa=["what is this?"], generator=gen).resolved("tiny-random")
    chunks = [Chunk(batch="canvas1", chunk=n, spec=spec, nonce="n1",
                    ref=f"runs/canvas1/chunks/{n:06d}.json",
                    items=[Item(id=f"i{n}-{k}", source=f"s{k}", image=f"s3://b/inputs/{k}.png")
                           for k in range(3)]) for n in range(3)]
    # one publish at a time
    res = [chunk_canvas(c).apply_async() for c in chunks]
    canvas = state()
    res2 = [send_chunk(c) for c in chunks]
    direct = state()
    same_results = [(type(a).__name__, type(a.parent).__name__, len(a.parent.results))
                    for a in res] == [(type(b).__name__, type(b.parent).__name__,
                                      len(b.parent.results)) for b in res2]
    # the submitter's path: batched publishes, pipelined chord set-up, no subscriptions
    for which in ("canvas", "direct"):
        s = _Sender(batch, chunk_canvas if which == "direct" else (lambda c: chunk_canvas(c)))
        for c in chunks:
            s.send(c)
        s.close()
        report[f"{gen}-sender-{which}"] = state()
    report[f"{gen}-canvas"], report[f"{gen}-direct"] = canvas, direct
    report[f"{gen}-results"] = same_results
print(json.dumps(report))
'''


@pytest.fixture(scope="module")
def report():
    with redis_server() as redis:
        env = {**os.environ, "ITX_BROKER_URL": redis.url + "/0",
               "ITX_RESULT_BACKEND": redis.url + "/1", "ITX_PROFILE": "tiny-random",
               "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        r = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, text=True,
                           capture_output=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("gen", ["sd", "None"])
def test_send_chunk_sends_what_the_canvas_sends(report, gen):
    canvas, direct = report[f"{gen}-canvas"], report[f"{gen}-direct"]
    assert canvas[1] > 10  # ids were found and numbered: tasks, groups, chords
    assert "light" in canvas[0] and ".s" in canvas[0]  # messages and chord sizes were read
    assert direct == canvas
    assert report[f"{gen}-results"]


@pytest.mark.parametrize("gen", ["sd", "None"])
def test_submitter_sends_what_the_canvas_sends(report, gen):
    assert report[f"{gen}-sender-direct"] == report[f"{gen}-sender-canvas"]
    # batched and pipelined, the broker and the result backend end up as one at a time
    assert report[f"{gen}-sender-canvas"] == report[f"{gen}-canvas"]
