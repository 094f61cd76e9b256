"""Stage reuse: the header stages' outputs for an image are kept in the store, in one object
per image content, so a later batch (any name) over the same images takes them from there
instead of running the models again::

    reuse/<c[:2]>/<c>.json    {"v": 2, "entries": {<e>: {"stage": "caption:blip",
                                                          "result": …, "ms": …}, …}}
    c = the image's content key: the sha256 its staged object is named by, inputs/<c>.<ext>
    e = sha256(stage:backend, model ref, options)[:32]

``options`` are the stage's inputs besides the image that change its output (VQA: the item's
questions). An image used where it already was in the store (not under ``inputs/``) has no
content key and is never reused. Errors are never kept (they may be transient).

Store requests: a chunk's header tasks read their items' objects once per process (one GET
per item, shared by every stage of the chunk and read ahead with it, ``prefetch.py``);
compose adds every stage's fresh outputs and writes each changed object once, in the
background. Two batches that write the same image's object at the same time may each drop the
other's new entries (the last write wins): that costs a recomputation later, never a wrong
output. ``PipelineSpec.reuse=False`` (``--no-reuse``) skips the lookups; fresh outputs are
still kept.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading

from workers.pipeline.read import POOL, Background, Lru
from workers.records import Chunk, Item, StagePartial
from workers.storage import NotFoundError, open_store

log = logging.getLogger(__name__)

REUSE_VERSION = 2  # bump when a stage's output format or this layout changes
_CONTENT = re.compile(r"(?:^|/)inputs/([0-9a-f]{32,64})\.[A-Za-z0-9]{1,8}$")
# (store, content, nonce) -> the entries its object held when this process read it for
# that submission ({}: none); compose merges into them, so an object the chunk's stages read
# is not read again
FOUND = Lru(4096)
BACKLOG = 256  # at most this many writes wait; keep() and start() wait for room beyond it
WRITES = Background(BACKLOG)
_queued: list = []  # writes keep() prepared, not started yet
_lock = threading.Lock()


def content_of(item: Item) -> str | None:
    """The content key of the item's staged image, or None (not content-addressed)."""
    m = _CONTENT.search(item.image or "")
    return m.group(1) if m else None


def object_key(content: str) -> str:
    return f"reuse/{content[:2]}/{content}.json"


def entry_key(key: str, ref: str, options) -> str:
    return hashlib.sha256(json.dumps([REUSE_VERSION, key, ref, options], sort_keys=True)
                          .encode()).hexdigest()[:32]


def _get(content: str) -> dict:
    try:
        obj = open_store().get_json(object_key(content))
    except NotFoundError:
        return {}
    except Exception as e:  # unreadable, or the store is down: compute instead
        log.debug("reuse object of %s not read: %s", content, e)
        return {}
    entries = obj.get("entries") if isinstance(obj, dict) and obj.get("v") == REUSE_VERSION \
        else None
    return entries if isinstance(entries, dict) else {}


def new_contents(items: list[Item]) -> set[str]:
    """Content keys of the items whose image staging wrote (``Item.new``): no earlier batch
    kept outputs for them, so they are not looked up (an object another batch writes for the
    same image meanwhile costs a recomputation, never a wrong output)."""
    return {c for it in items if it.new and (c := content_of(it))}


def read(contents, nonce: str | None, new: set[str] = frozenset()) -> dict[str, dict]:
    """``content -> entries`` for these images: from memory when this process read them
    already for this submission (``nonce``), none for ``new`` ones (``new_contents``), else
    one GET each, in parallel."""
    uri = open_store().uri
    out, todo = {}, []
    for c in dict.fromkeys(contents):
        got = FOUND.get((uri, c, nonce))
        if got is None and c in new:
            got = {}
            FOUND.put((uri, c, nonce), got)  # compose's write merges into it: no GET either
        if got is None:
            todo.append(c)
        else:
            out[c] = got
    for c, entries in zip(todo, POOL.map(_get, todo)):
        FOUND.put((uri, c, nonce), entries)
        out[c] = entries
    return out


def lookup(keys: dict[str, tuple[str, str]], nonce: str | None,
           new: set[str] = frozenset()) -> dict[str, dict]:
    """``item id -> {"result", "ms"}`` for the ids (``-> (content, entry)``) whose entry the
    image's reuse object holds (``new``: as ``read``)."""
    found = read((c for c, _ in keys.values()), nonce, new)
    out = {}
    for i, (c, e) in keys.items():
        hit = found[c].get(e)
        if isinstance(hit, dict) and "result" in hit:
            out[i] = hit
    return out


def keep(chunk: Chunk, partials: list[StagePartial]) -> None:
    """Add the partials' fresh outputs (not errors, not reused) to their images' reuse
    objects, and queue one write per changed object. ``start`` sends them to the background
    (compose calls it once its records are written, so they never wait behind these), and
    the task goes on: the writes may end after it (``flush`` waits for them; a worker process
    that stops and an embedded run call it). Best effort: a failed write costs only reuse."""
    from workers.pipeline.run import reuse_keys

    new: dict[str, dict] = {}
    for p in partials:
        fresh = [i for i in p.results if i not in p.reused and i not in p.errors]
        if not fresh or p.cancelled:
            continue
        stage, name = p.stage.split(":", 1)
        keys = reuse_keys(chunk, stage, name, ref=p.model or None)
        for i in fresh:
            if i in keys:
                c, e = keys[i]
                new.setdefault(c, {})[e] = {"stage": p.stage, "result": p.results[i],
                                            "ms": p.ms.get(i)}
    if len(_queued) > BACKLOG:  # bounded, should start() not have been called
        start()
    store, nonce, staged = open_store(), chunk.nonce, new_contents(chunk.items)

    def put(c: str) -> None:  # runs in POOL: reads directly, never through POOL (deadlock)
        try:
            old = FOUND.get((store.uri, c, nonce))  # from memory when the stages ran here
            if old is None:
                old = {} if c in staged else _get(c)
            entries = {**old, **new[c]}
            store.put_json(object_key(c), {"v": REUSE_VERSION, "entries": entries})
            FOUND.put((store.uri, c, nonce), entries)
        except Exception as e:
            log.warning("could not keep the outputs of %s for reuse: %s", c, e)

    with _lock:
        _queued.extend((put, c) for c in new)


def start() -> None:
    """Send the queued reuse writes to the background."""
    with _lock:
        jobs = _queued[:]
        _queued.clear()
    for fn, c in jobs:
        WRITES.submit(fn, c)


def flush(timeout: float | None = 120) -> None:
    """Start the queued reuse writes and wait for every one so far."""
    start()
    WRITES.wait(timeout)
