"""The ops Python API over a file:// store (no broker): states, gc, batches, cancel marker."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

import tests.ops_plugins  # noqa: F401  declares caption:slow
from orchestrator import ops
from orchestrator.batch import BatchError
from orchestrator.embedded import run
from workers.settings import use_settings
from workers.spec import PipelineSpec
from workers.storage import open_store


@pytest.fixture()
def done_batch(tmp_path, monkeypatch):
    monkeypatch.setenv("ITX_TEST_SLOW_S", "0")
    for i in range(5):
        a = np.random.default_rng(i).integers(0, 255, (12, 12, 3), dtype=np.uint8)
        Image.fromarray(a).save(tmp_path / f"i{i}.png")
    out = tmp_path / "out"
    spec = PipelineSpec(profile="tiny-random", ocr="none", captioners=["slow"], generator="none")
    with use_settings(auto_gc=False):  # `itx run` cleans up after itself by default
        recs = run([str(tmp_path / "i*.png")], spec, out, batch="b1", chunk=2)
    assert len(recs) == 5 and not [r for r in recs if r["error"]]
    return open_store(out.as_uri()), recs


def test_states_gc_and_listing(done_batch):
    store, recs = done_batch
    st = ops.status("b1", store)
    assert st["state"] == "done" and st["total"] == 5 and st["cancelled"] == 0
    assert list(store.list("runs/b1/parts/")) and len(list(store.list("runs/b1/chunks/"))) == 3
    freed = ops.gc("b1", store)
    assert freed["ledgers"] == 3 and freed["parts"] > 0 and freed["bytes"] > 0
    assert not list(store.list("runs/b1/parts/")) and not list(store.list("runs/b1/chunks/"))
    assert len(list(store.list("runs/b1/results/"))) == 5  # records stay
    assert ops.status("b1", store)["total"] == 5  # from items.jsonl.gz
    assert ops.gc("b1", store)["objects"] == 0
    assert [b["name"] for b in ops.batches(store)] == ["b1"]
    assert ops.batches(store)[0] | {"created": None} == {
        "name": "b1", "created": None, "items": 5, "done": 5, "failed": 0, "state": "done"}

    # an item loses its record: running while recent, incomplete when nothing happens
    store.delete(f"runs/b1/results/{recs[0]['id']}.json")
    ops.uncancel("b1", store)  # drops the stale summary, as resume does
    assert ops.status("b1", store)["state"] == "running"
    with use_settings(light_time_limit=0, heavy_time_limit=0):
        assert ops.status("b1", store)["state"] == "incomplete"
    with pytest.raises(BatchError, match="1 items without a record"):
        ops.gc("b1", store)
    ops.cancel("b1", store)
    st = ops.status("b1", store)
    assert st["state"] == "cancelled" and st["cancelled"] == 1 and st["done"] == 4
    assert [b["state"] for b in ops.batches(store)] == ["cancelled"]
    with pytest.raises(BatchError, match="no batch 'nope'"):
        ops.cancel("nope", store)
    assert os.environ.get("ITX_TEST_SLOW_S") == "0"

    # a new embedded run into the same folder: a fresh ledger, cleaned up when it is done
    spec = PipelineSpec(profile="tiny-random", ocr="none", captioners=["slow"], generator="none",
                        edits=["template:{caption}!"])  # new ids: only the captions reused
    src = recs[1]["source"]
    out = run([str(src)], spec, store.root, batch="b1")
    assert len(out) == 1 and out[0]["reused"] == ["caption:slow"]
    assert not list(store.list("runs/b1/parts/")) and not list(store.list("runs/b1/chunks/"))
    assert ops.status("b1", store)["total"] == 1


def test_no_reuse_is_not_part_of_the_item_ids():
    a = PipelineSpec(profile="tiny-random", captioners=["blip"])
    assert a.fingerprint() == a.model_copy(update={"reuse": False}).fingerprint()


def test_ledgers_mark_the_images_staging_wrote(done_batch, tmp_path, monkeypatch):
    """``Item.new``: the first batch over an image wrote it into the store (workers skip its
    reuse lookup); a later batch over the same image finds it there."""
    store, recs = done_batch
    first = [it for c in sorted(store.list("runs/b1/chunks/"))
             for it in store.get_json(c)["items"]]
    assert len(first) == 5 and all(it["new"] is True for it in first)
    spec = PipelineSpec(profile="tiny-random", ocr="none", captioners=["slow"], generator="none",
                        edits=["template:{caption}?"])
    with use_settings(auto_gc=False):
        out = run([str(tmp_path / "i*.png")], spec, store.root, batch="b2", chunk=8)
    assert sorted(r["reused"] for r in out) == [["caption:slow"]] * 5
    (ledger,) = store.list("runs/b2/chunks/")
    assert [it["new"] for it in store.get_json(ledger)["items"]] == [None] * 5
