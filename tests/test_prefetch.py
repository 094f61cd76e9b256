"""Keeping the model busy: while a chunk's model runs, the next chunk's ledger, images and
stage-reuse objects are read ahead, so its tasks make no reads of their own; stage reuse is
one object per image (one GET per item for all stages, one PUT by compose).

Real S3 (moto's server) behind the fault proxy, which sees every request the code makes."""
from __future__ import annotations

import boto3
import numpy as np
from PIL import Image

from tests.faultproxy import FaultProxy
from tests.s3fixture import moto_server, s3_env

BUCKET = "itx-test-prefetch"


def _chunks(store, spec, n_chunks: int, per: int, start: int = 0):
    from workers.records import Chunk

    chunks = []
    for c in range(n_chunks):
        items = []
        for i in range(per):
            k = start + c * per + i
            a = np.random.default_rng(k).integers(0, 255, (24 + k % 3 * 8, 32, 3), np.uint8)
            uri, _ = store.put_content(_png(a), "png")
            items.append({"id": f"p{k}", "image": uri, "source": f"p{k}.png"})
        chunk = Chunk(batch="ahead", chunk=c, spec=spec, items=items,
                      ref=f"runs/ahead/chunks/{c:06d}.json", nonce=f"n{start}")
        store.put_json(chunk.ref, chunk.ledger())
        chunks.append(chunk)
    return chunks


def _png(a) -> bytes:
    import io

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def _reads(proxy, prefix: str) -> int:
    return sum(1 for m, p in proxy.requests if m == "GET" and f"/store/{prefix}" in p)


def test_read_ahead_and_one_reuse_object_per_image(model_dir):
    from workers.pipeline import prefetch, reuse
    from workers.pipeline.compose import compose
    from workers.pipeline.read import IMAGES
    from workers.pipeline.run import run_stage
    from workers.pipeline.write import finish
    from workers.settings import use_settings
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    spec = PipelineSpec(ocr="none", captioners=["blip", "git"], generator="none").resolved(
        "tiny-random")
    with moto_server() as endpoint, FaultProxy(endpoint) as proxy, s3_env(proxy.url):
        boto3.client("s3").create_bucket(Bucket=BUCKET)
        with use_settings(store=f"s3://{BUCKET}/store"):
            store = open_store()
            c0, c1, c2 = _chunks(store, spec, 3, per=4)
            proxy.reset_counts()
            p0 = [run_stage(c0, "caption", "blip"), run_stage(c0, "caption", "git")]
            # chunk 0's first stage read its 4 images and 4 reuse objects (one per image,
            # for both stages) and then read chunk 1 ahead: ledger, images, reuse objects
            prefetch.wait(c1)
            assert _reads(proxy, "inputs/") == 8 and _reads(proxy, "reuse/") == 8
            assert _reads(proxy, "runs/ahead/chunks/000001") == 1
            assert all(IMAGES.get(it.image) is not None for it in c1.items)
            finish(compose(p0, c0))
            proxy.reset_counts()
            p1 = [run_stage(c1, "caption", "blip"), run_stage(c1, "caption", "git")]
            # chunk 1's tasks found everything in memory; they read chunk 2 ahead (stride 1)
            prefetch.wait(c2)
            assert _reads(proxy, "runs/ahead/chunks/000001") == 0
            assert _reads(proxy, "inputs/") == 4 and _reads(proxy, "reuse/") == 4
            finish(compose(p1, c1))
            assert all(r for p in p0 + p1 for r in p.results.values())

            # compose kept both stages of each image in one object (written in the background)
            reuse.flush()
            it = c0.items[0]
            obj = store.get_json(reuse.object_key(reuse.content_of(it)))
            assert obj["v"] == reuse.REUSE_VERSION
            assert sorted(e["stage"] for e in obj["entries"].values()) == \
                ["caption:blip", "caption:git"]
            assert obj["entries"][reuse.entry_key("caption:blip", spec.model_ref(
                "caption", "blip"), {})]["result"] == p0[0].results[it.id]

            # a new submission over the same images (new nonce, nothing cached for it):
            # one GET per image answers every stage, and nothing runs again
            again = _chunks(store, spec, 1, per=4, start=0)[0].model_copy(
                update={"nonce": "other", "batch": "again"})
            proxy.reset_counts()
            parts = [run_stage(again, "caption", "blip"), run_stage(again, "caption", "git")]
            assert [sorted(p.reused) for p in parts] == [sorted(i.id for i in again.items)] * 2
            assert parts[1].results == p0[1].results
            assert _reads(proxy, "reuse/") == 4 and _reads(proxy, "inputs/") == 0


def test_a_wrong_guess_costs_only_reads(model_dir, tmp_path):
    """No ledger where the read-ahead looks (the batch's last chunk, or another worker's
    stride): nothing breaks, and the next task reads for itself."""
    from workers.pipeline import prefetch
    from workers.pipeline.run import run_stage
    from workers.settings import use_settings
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    spec = PipelineSpec(ocr="none", captioners=["blip"], generator="none").resolved(
        "tiny-random")
    with use_settings(store=(tmp_path / "store").as_uri()):
        store = open_store()
        (last,) = _chunks(store, spec, 1, per=3, start=100)
        p = run_stage(last, "caption", "blip")
        prefetch.wait(last.model_copy(update={"chunk": 1, "ref": "runs/ahead/chunks/000001.json"}))
        assert len(p.results) == 3 and not p.errors
        with use_settings(prefetch=False):
            (off,) = _chunks(store, spec, 1, per=2, start=200)
            assert len(run_stage(off, "caption", "blip").results) == 2


def test_compose_elsewhere_keeps_more_outputs_than_there_are_io_threads(tmp_path):
    """compose in a process that did not run the chunk's stages reads each image's reuse
    object before adding to it; with more objects than I/O threads every write still ends
    (a write that waited on the same thread pool for its read would deadlock it)."""
    import hashlib
    import time

    from workers.pipeline import reuse
    from workers.pipeline.read import POOL
    from workers.records import Chunk, StagePartial
    from workers.settings import use_settings
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    spec = PipelineSpec(ocr="none", captioners=["blip"], generator="none").resolved(
        "tiny-random")
    n = POOL._max_workers + 8
    with use_settings(store=(tmp_path / "store").as_uri()):
        store = open_store()
        items = [{"id": f"k{i}", "image": store.url(
            f"inputs/{hashlib.sha256(str(i).encode()).hexdigest()}.png")} for i in range(n)]
        chunk = Chunk(batch="many", spec=spec, items=items, nonce="elsewhere")
        part = StagePartial(stage="caption:blip", model=spec.model_ref("caption", "blip"),
                            results={it["id"]: f"caption {it['id']}" for it in items})
        reuse.keep(chunk, [part])
        t0 = time.monotonic()
        reuse.flush(timeout=60)
        assert time.monotonic() - t0 < 30
        for it in chunk.items:
            obj = store.get_json(reuse.object_key(reuse.content_of(it)))
            assert [e["result"] for e in obj["entries"].values()] == [f"caption {it.id}"]


def test_new_images_are_not_looked_up_for_reuse(model_dir):
    """Images staging wrote (``Item.new``) have no reuse object yet: no GET for their lookup
    nor for compose's write, which still keeps their outputs for the next batch."""
    from workers.pipeline import reuse
    from workers.pipeline.compose import compose
    from workers.pipeline.run import run_stage
    from workers.pipeline.write import finish
    from workers.settings import use_settings
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    spec = PipelineSpec(ocr="none", captioners=["blip"], generator="none").resolved(
        "tiny-random")
    with moto_server() as endpoint, FaultProxy(endpoint) as proxy, s3_env(proxy.url):
        boto3.client("s3").create_bucket(Bucket=BUCKET + "-new")  # a process keeps a store per URI
        with use_settings(store=f"s3://{BUCKET}-new/store", prefetch=False):
            store = open_store()
            (c,) = _chunks(store, spec, 1, per=4, start=400)
            c = c.model_copy(update={"items": [it.model_copy(update={"new": True})
                                               for it in c.items]})
            proxy.reset_counts()
            finish(compose([run_stage(c, "caption", "blip")], c))
            reuse.flush()
            assert _reads(proxy, "reuse/") == 0
            assert sum(1 for m, p in proxy.requests if m == "PUT" and "/store/reuse/" in p) == 4
            # the next batch over the same images (not new to it) takes them from there
            again = c.model_copy(update={"nonce": "next", "items": [
                it.model_copy(update={"new": None}) for it in c.items]})
            assert sorted(run_stage(again, "caption", "blip").reused) == \
                sorted(it.id for it in c.items)


def test_compose_ahead_writes_the_records_before_its_task(model_dir):
    """The process that ran a chunk's last header stage composes it at once and writes the
    records in the background; compose's task then only waits for them. A compose whose
    message names other partials composes again."""
    from workers.pipeline import ahead
    from workers.pipeline.read import hand_on
    from workers.pipeline.run import run_stage
    from workers.pipeline.write import record_key
    from workers.settings import use_settings
    from workers.spec import PipelineSpec
    from workers.storage import open_store

    spec = PipelineSpec(ocr="none", captioners=["blip", "git"], vqa=["what is it?"],
                        generator="none").resolved("tiny-random")
    with moto_server() as endpoint, FaultProxy(endpoint) as proxy, s3_env(proxy.url):
        boto3.client("s3").create_bucket(Bucket=BUCKET + "-ahead")
        with use_settings(store=f"s3://{BUCKET}-ahead/store", prefetch=False):
            store = open_store()
            (c,) = _chunks(store, spec, 1, per=4, start=500)
            proxy.reset_counts()
            ptrs = []
            for stage, name in (("caption", "blip"), ("caption", "git"), ("vqa", "blip-vqa")):
                assert ahead.take(c, ptrs) is None  # not every stage has run
                ptrs.append(hand_on(c, f"{stage}:{name}", run_stage(c, stage, name),
                                    background=True))
                ahead.start(c)
            assert ahead.take(c, ptrs[:2]) is None and ahead.take(c, ptrs + ptrs[:1]) is None
            summary = ahead.take(c, list(reversed(ptrs)))
            assert summary["done"] == 4 and sorted(summary["ids"]) == sorted(i.id for i in c.items)
            for it in c.items:  # in the store once take() returns
                rec = store.get_json(record_key(c.batch, it.id))
                assert set(rec["captions"]) == {"blip", "git"} and rec["vqa"]["what is it?"]
            assert sum(1 for m, p in proxy.requests if m == "PUT" and "/results/" in p) == 4

            # not composed ahead: a generator follows, or ITX_COMPOSE_AHEAD=false
            gen = c.model_copy(update={"nonce": "gen", "spec": spec.model_copy(
                update={"generator": "sd"})})
            (off,) = _chunks(store, spec, 1, per=2, start=600)
            with use_settings(compose_ahead=False):
                for ch in (gen, off):
                    ps = [hand_on(ch, f"caption:{n}", run_stage(ch, "caption", n))
                          for n in ("blip", "git")]
                    ps.append(hand_on(ch, "vqa:blip-vqa", run_stage(ch, "vqa", "blip-vqa")))
                    ahead.start(ch if ch is off else gen)
                    assert ahead.take(ch, ps) is None


def test_cached_images_do_not_wait_behind_the_io_threads(tmp_path):
    """A task's images read ahead are taken from memory in its own thread, even while every
    I/O thread is busy with background writes."""
    import threading
    import time

    from workers.pipeline.read import POOL, read_images
    from workers.records import Item
    from workers.settings import use_settings
    from workers.storage import open_store

    with use_settings(store=(tmp_path / "store").as_uri()):
        store = open_store()
        items = [Item(id=f"c{i}", image=store.put_content(
            _png(np.full((8, 8, 3), i, np.uint8)), "png")[0]) for i in range(4)]
        assert all(not isinstance(v, Exception) for v in read_images(items).values())
        release = threading.Event()
        busy = [POOL.submit(release.wait, 10) for _ in range(2 * POOL._max_workers)]
        try:
            t0 = time.monotonic()
            got = read_images(items)
            assert time.monotonic() - t0 < 1.0
            assert [got[it.id].getpixel((0, 0)) for it in items] == [(i, i, i) for i in range(4)]
        finally:
            release.set()
            for f in busy:
                f.result()


def test_images_stream_in_order_as_they_are_read(model_dir):
    """A stage's first mini-batch need not wait for the chunk's last image: ``stream_images``
    gives each image, in the items' order, as soon as it is in memory, and says when all are
    (the next chunk's read-ahead starts then)."""
    import time

    from workers.pipeline.read import stream_images
    from workers.records import Item
    from workers.settings import use_settings
    from workers.storage import open_store

    with moto_server() as endpoint, FaultProxy(endpoint) as proxy, s3_env(proxy.url):
        boto3.client("s3").create_bucket(Bucket=BUCKET + "-stream")
        with use_settings(store=f"s3://{BUCKET}-stream/store"):
            store = open_store()
            items = [Item(id=f"s{i}", image=store.put_content(
                _png(np.full((8, 8, 3), i, np.uint8)), "png")[0]) for i in range(6)]
            items.insert(3, Item(id="bad", image=store.url("inputs/missing.png")))
            list(stream_images(items[:3]))  # the first three are in memory now
            proxy.set(delay=0.6)
            events = []
            t0 = time.monotonic()
            for it, img in stream_images(items, when_read=lambda: events.append("all read")):
                events.append((it.id, time.monotonic() - t0,
                               type(img).__name__ if it.id == "bad" else img.getpixel((0, 0))))
            got = [e for e in events if e != "all read"]
            assert [e[0] for e in got] == [it.id for it in items]
            assert all(e[1] < 0.3 for e in got[:3]) and all(e[1] >= 0.6 for e in got[3:])
            assert got[3][2] == "ItemError" and got[4][2] == (3, 3, 3)
            assert events.index("all read") > 3  # after the reads, before the last item
