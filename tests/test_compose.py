"""compose, the last step of a chunk's canvas: one record per item whatever reaches it."""
from __future__ import annotations

import numpy as np
from PIL import Image


def test_compose_dedupes_partials_and_runs_a_missing_stage(tmp_path, model_dir):
    """A header task that ran twice can reach compose twice while another stage never does
    (a redelivery after a worker died, a result lost with a broker restart). compose keeps one
    partial per stage and runs the missing ones itself: no record lacks a stage it asked for.
    Records land on deterministic keys: composing again adds no object."""
    from workers.pipeline.compose import compose
    from workers.pipeline.run import run_stage
    from workers.pipeline.write import finish
    from workers.records import Chunk
    from workers.settings import use_settings
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    store = open_store((tmp_path / "store").as_uri())
    items = []
    for i in range(3):
        a = np.random.default_rng(100 + i).integers(0, 255, (32, 32, 3), dtype=np.uint8)
        uri = store.put_image(f"inputs/x{i}.png", Image.fromarray(a))
        items.append({"id": f"x{i}", "image": uri, "source": f"x{i}.png"})
    spec = PipelineSpec(ocr="rapidocr", captioners=["blip"], vqa=["what is it?"],
                        generator="none").resolved("tiny-random")
    chunk = Chunk(batch="dup", chunk=0, spec=spec, items=items)
    with use_settings(store=store.uri):
        ocr = run_stage(chunk, "ocr", "rapidocr")
        ocr.attempts = 2  # this copy ran twice
        whole = [ocr, run_stage(chunk, "caption", "blip"), run_stage(chunk, "vqa", "blip-vqa")]
        finish(compose(whole, chunk))
        expected = {i["id"]: store.get_json(f"runs/dup/results/{i['id']}.json") for i in items}
        before = sorted(store.list("runs/dup/"))
        # the OCR partial twice, caption and VQA missing
        summary = finish(compose([ocr, ocr.model_copy(deep=True)], chunk))
        after = sorted(store.list("runs/dup/"))
    assert summary["done"] == 3 and summary["failed"] == 0
    assert after == before  # the same keys, overwritten
    for i in items:
        rec = store.get_json(f"runs/dup/results/{i['id']}.json")
        want = expected[i["id"]]
        assert set(rec["models"]) == {"ocr:rapidocr", "caption:blip", "vqa:blip-vqa"}
        for k in ("ocr", "captions", "vqa", "prompt"):
            assert rec[k] == want[k], k
        assert rec["captions"]["blip"] and rec["vqa"]["what is it?"]
        assert rec["attempts"] == 2 and rec["store_retries"] == 0


def test_compose_waits_for_a_partial_still_being_written(tmp_path, monkeypatch):
    """Header tasks write their partials in the background: compose in another process
    reads one that lands while it waits, and gets None (the stage runs again inline, as
    above) for one that never lands because its worker died first."""
    import threading
    import time

    from workers.pipeline import read
    from workers.records import StagePartial
    from workers.settings import use_settings
    from workers.storage import open_store

    monkeypatch.setattr(read, "PARTIAL_WAIT_S", 1.0)
    with use_settings(store=(tmp_path / "store").as_uri()):
        store = open_store()
        late = {"ref": "runs/w/parts/000000/caption-blip.json", "nonce": "n1"}
        part = StagePartial(stage="caption:blip", results={"a": "a cat"})
        threading.Timer(0.3, store.put_json, (late["ref"], part.dump())).start()
        got = read.load_partial(late)
        assert got is not None and got.results == {"a": "a cat"}
        t0 = time.monotonic()
        assert read.load_partial({"ref": "runs/w/parts/000000/vqa-blip-vqa.json",
                                  "nonce": "n1"}) is None
        assert 1.0 <= time.monotonic() - t0 < 5
