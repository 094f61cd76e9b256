"""Operating batches: list them, cancel, retry failed items, clean up transient objects.

Everything here works from the store (and the broker, to enqueue): any machine, after Redis
forgot everything.

    runs/<batch>/cancel.json        the cancel marker tasks obey (``workers.control``)
    runs/<batch>/items.jsonl.gz     what ``gc`` keeps of the chunk ledgers: one item per line
                                    (status, resume and retry read it)
    runs/<batch>/summary.json       a finished batch's counts, written by ``gc`` (``batches``
                                    reads it instead of every record)
"""
from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterable, Iterator

from orchestrator.batch import Batch, BatchError
from workers.control import cancel_key
from workers.records import Chunk, Item
from workers.settings import get_settings
from workers.spec import PipelineSpec
from workers.storage import StoreError, open_store

TRANSIENT = ("timeout", "store_unavailable", "worker_lost", "oom")
STATES = ("running", "done", "cancelled", "incomplete")


def items_key(name: str) -> str:
    return f"runs/{name}/items.jsonl.gz"


def summary_key(name: str) -> str:
    return f"runs/{name}/summary.json"


# --- what a batch holds ----------------------------------------------------------------------
def kept_ids(b: Batch) -> list[str]:
    """The ids in the compact items file ``gc`` left (none before a gc)."""
    try:
        data = gzip.decompress(b.store.get(items_key(b.name)))
    except StoreError:
        return []
    return [json.loads(line)["id"] for line in data.splitlines() if line.strip()]


def batch_items(b: Batch) -> Iterator[Item]:
    """The batch's items, each id once (its latest ledger entry wins): the compact items file
    ``gc`` left, then the chunk ledgers."""
    found: dict[str, Item] = {}
    try:
        for line in gzip.decompress(b.store.get(items_key(b.name))).splitlines():
            it = Item.model_validate_json(line)
            found[it.id] = it
    except StoreError:
        pass
    for key in b.store.list(f"{b.prefix}/chunks/"):
        for it in b.store.get_json(key)["items"]:
            it = Item.model_validate(it)
            found[it.id] = it
    yield from found.values()


def is_cancelled(b: Batch) -> bool:
    return b.store.exists(cancel_key(b.name))


def state(b: Batch, st: dict) -> str:
    """``done``: every item has a record; ``cancelled``: cancel marker, items left;
    ``running``: items left and a record landed (or the batch was created) recently, within
    the longest task time limit; ``incomplete``: items left and nothing happening."""
    if st["complete"]:
        return "done"
    if is_cancelled(b):
        return "cancelled"
    s = get_settings()
    last = max(filter(None, [st.get("created"), st.get("last_finished_at")]), default=0)
    return "running" if time.time() - last < max(s.light_time_limit, s.heavy_time_limit) \
        else "incomplete"


def status(name: str, store=None) -> dict:
    """``Batch.status`` plus ``state`` and ``cancelled`` (items left without a record by a
    cancel)."""
    b = Batch(name, store)
    st = b.status()
    st["state"] = state(b, st)
    st["cancelled"] = st["pending"] if st["state"] == "cancelled" else 0
    return st


def batches(store=None) -> list[dict]:
    """Every batch in the store, newest first: name, created, items, done, failed, state.
    A finished batch that ``gc`` summarised costs one read; others are counted live."""
    store = store or open_store()
    out = []
    for name in store.dirs("runs/"):
        b = Batch(name, store)
        if not b.exists():
            continue
        try:
            st = store.get_json(summary_key(name))
        except StoreError:
            st = status(name, store)
        out.append({"name": name, "created": st.get("created"), "items": st["total"],
                    "done": st["done"], "failed": st["failed"], "state": st["state"]})
    out.sort(key=lambda r: r["created"] or 0, reverse=True)
    return out


# --- cancel ----------------------------------------------------------------------------------
def cancel(name: str, store=None, app=None) -> dict:
    """Cancel a batch: no new task of it starts work (each checks the marker first, so what is
    queued drains in milliseconds without reading an image or loading a model); running
    chunks stop at their next mini-batch boundary and write no records. Items finished
    before keep their records; ``submit(resume=True)`` continues the batch later. Other
    batches on the same pools are unaffected."""
    b = Batch(name, store or open_store())
    b.meta()  # raises BatchError when there is no such batch
    b.store.put_json(cancel_key(name), {"at": time.time()})
    return {"batch": name, "cancelled_at": time.time()}


def uncancel(name: str, store) -> None:
    """Reopen a batch before enqueueing more of it (``--resume`` and ``retry`` call this):
    remove its cancel marker and the summary ``gc`` wrote (its counts are about to change)."""
    for key in (cancel_key(name), summary_key(name)):
        try:
            store.delete(key)
        except StoreError:
            pass


# --- retry -----------------------------------------------------------------------------------
def retry(name: str, kinds: Iterable[str] = TRANSIENT, *, store=None, app=None,
          chunk: int | None = None) -> Batch:
    """Resubmit only the items whose records are errors of ``kinds``, with the same ids:
    their records are replaced, and ``attempts`` grows by the earlier attempts. Returns the
    Batch tracking what was enqueued (``.submitted`` items; ``.wait()`` follows them)."""
    from orchestrator.submit import _Sender, check_services
    from orchestrator.workflow import chunk_canvas

    if app is None:
        from workers.app import app
    store = store or open_store()
    b = Batch(name, store, app)
    meta = b.meta()
    kinds = set(kinds)
    spec = PipelineSpec.model_validate(meta["spec"])
    size = chunk or meta.get("chunk") or get_settings().chunk_size
    check_services(app)
    from orchestrator.export import _window_map

    done = b.result_ids()
    finished = [it for it in batch_items(b) if it.id in done]
    todo: list[Item] = []
    for it, rec in zip(finished, _window_map(lambda it: b.record(it.id), finished)):
        if rec.kind in kinds:
            todo.append(it.model_copy(update={"prior_attempts": rec.attempts}))
    uncancel(name, store)
    if not todo:
        return b
    nchunk = _next_chunk(b)
    nonce = f"retry-{time.time_ns():x}"
    eager = app.conf.task_always_eager
    sender = None if eager else _Sender(b, chunk_canvas)
    try:
        for k in range(0, len(todo), size):
            c = Chunk(batch=name, chunk=nchunk, spec=spec, items=todo[k:k + size],
                      ref=f"{b.prefix}/chunks/{nchunk:06d}.json", nonce=nonce)
            if sender is not None:
                sender.send(c)
            else:
                store.put_json(c.ref, c.ledger())
                b.track(chunk_canvas(c).apply_async(), len(c.items))
            nchunk += 1
    finally:
        if sender is not None:
            sender.close()
    return b


def _next_chunk(b: Batch) -> int:
    last = -1
    for key in b.store.list(f"{b.prefix}/chunks/"):
        try:
            last = max(last, int(key.rsplit("/", 1)[-1].split(".")[0]))
        except ValueError:
            pass
    return last + 1


# --- clean up --------------------------------------------------------------------------------
def gc(name: str, store=None, force: bool = False) -> dict:
    """Remove a finished batch's transient objects: ``parts/`` (what stages handed on) and the
    chunk ledgers, keeping their items in one compact ``items.jsonl.gz`` (status, resume and
    retry read it) and the counts in ``summary.json``. Records and images stay. Refuses a
    batch with items left unless ``force``. Returns what was freed."""
    b = Batch(name, store or open_store())
    b.meta()
    st = status(name, b.store)
    if not st["complete"] and not force:
        raise BatchError(f"batch {name!r} has {st['pending']} items without a record; "
                         f"gc removes transient objects of finished batches (--force to do it "
                         f"anyway: running chunks of it would fail)")
    items = list(batch_items(b))
    ledgers = list(b.store.sizes(f"{b.prefix}/chunks/"))
    parts = list(b.store.sizes(f"{b.prefix}/parts/"))
    if ledgers:
        blob = b"".join(it.model_dump_json(exclude_none=True).encode() + b"\n" for it in items)
        b.store.put(items_key(name), gzip.compress(blob), "application/gzip")
    for key, _ in ledgers + parts:
        b.store.delete(key)
    if st["complete"]:
        b.store.put_json(summary_key(name), {k: st[k] for k in (
            "batch", "total", "done", "failed", "failures", "created", "state")})
    return {"batch": name, "objects": len(ledgers) + len(parts), "ledgers": len(ledgers),
            "parts": len(parts), "bytes": sum(n for _, n in ledgers + parts),
            "kept_items": len(items)}


def auto_gc(b: Batch, st: dict) -> dict | None:
    """After a wait: gc the batch when it is complete and ``ITX_AUTO_GC`` is on."""
    if not (st.get("complete") and get_settings().auto_gc):
        return None
    try:
        return gc(b.name, b.store)
    except (BatchError, StoreError):
        return None

