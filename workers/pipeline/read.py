"""Reading: a chunk's ledger, its stage partials and its images, from the store.

Tasks get a :class:`~workers.records.Pointer` (``{"ref", "nonce"}``) and read the chunk from
its ledger; stage partials and compose's records are handed on the same way
(``runs/<batch>/parts/<chunk>/<name>.json``), so a few hundred bytes cross the broker per
chunk however many items it holds. Objects read or written here are kept per process under
their key and the chunk's nonce (new for every submission): the stages of one chunk that run
in one process read it once, and compose finds their partials in memory. Decoded images are
kept too (bounded in bytes), so stages of the same chunk decode each image once.
"""
from __future__ import annotations

import ctypes
import json
import logging
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait

from workers.images import ItemError, decode_image
from workers.records import Chunk, ComposeState, Item, Pointer, StagePartial
from workers.settings import get_settings
from workers.storage import (NotFoundError, OutsideStoreError, StoreError, TooLargeError,
                             TransientStoreError, open_store)

log = logging.getLogger(__name__)


class Lru:
    """A thread-safe least-recently-used map bounded by the total ``size`` of its values
    (``sizeof`` of each; by default each counts 1)."""

    def __init__(self, size: int, sizeof: Callable[[object], int] = lambda v: 1):
        self.size, self.sizeof = size, sizeof
        self.used = 0
        self._d: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key, default=None):
        with self._lock:
            if key not in self._d:
                return default
            self._d.move_to_end(key)
            return self._d[key][0]

    def put(self, key, value, n: int | None = None) -> None:
        """Keep ``value``; ``n``: its size, when the caller knows it (else ``sizeof``)."""
        n = self.sizeof(value) if n is None else n
        with self._lock:
            if key in self._d:
                self.used -= self._d.pop(key)[1]
            if n > self.size:
                return  # larger than the whole cache: not kept
            self._d[key] = (value, n)
            self.used += n
            while self.used > self.size:
                self.used -= self._d.popitem(last=False)[1][1]

    def __len__(self) -> int:
        return len(self._d)


def image_bytes(img) -> int:
    """Memory a decoded image (or an ItemError) holds."""
    if isinstance(img, ItemError):
        return 256
    w, h = img.size
    return w * h * max(1, len(img.getbands())) + 256


def return_large_blocks(threshold: int) -> bool:
    """Have glibc serve allocations of ``threshold`` bytes and more (a decoded image, its
    tensors) from mappings of their own, unmapped when freed (``mallopt(M_MMAP_THRESHOLD)``).
    By default glibc raises that threshold to the size of each large block freed, so later
    images come from the heap, which fragments and does not shrink: over a stream of 13 MB
    images a worker's RSS kept growing 5-10 % instead of levelling off. No-op off glibc."""
    if threshold <= 0 or not sys.platform.startswith("linux"):
        return False
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(-3, int(threshold)))  # M_MMAP_THRESHOLD
    except (OSError, AttributeError):
        return False


return_large_blocks(get_settings().malloc_mmap_threshold)  # this process and its forks
_MISS = object()
IMAGES = Lru(get_settings().image_cache_bytes, image_bytes)  # image URI -> image | ItemError
# (store, key, nonce) -> a chunk, partial or state read or written here, counted as
# OBJECT_WEIGHT x its JSON bytes (roughly what the parsed objects hold in memory)
OBJECT_WEIGHT = 4
OBJECTS = Lru(get_settings().object_cache_bytes)
# store requests and decoding: a chunk's requests go out at once (the S3 client keeps 32
# connections), so a store's latency is paid about once per chunk, not once per item
POOL = ThreadPoolExecutor(max_workers=32, thread_name_prefix="itx-io")


class Background:
    """Writes sent to ``POOL`` that the task does not wait for, at most ``limit`` at a time
    (``submit`` waits for room), and ``wait`` for the ones sent so far (a pool process that
    stops, an embedded run). Never submit from a ``POOL`` thread: it could wait for itself."""

    def __init__(self, limit: int):
        self._room = threading.BoundedSemaphore(limit)
        self._futures: set = set()
        self._lock = threading.Lock()

    def submit(self, fn, *args) -> None:
        self._room.acquire()
        f = POOL.submit(fn, *args)
        with self._lock:
            self._futures.add(f)
        f.add_done_callback(self._done)

    def _done(self, f) -> None:
        with self._lock:
            self._futures.discard(f)
        self._room.release()

    def wait(self, timeout: float | None = None) -> None:
        with self._lock:
            todo = list(self._futures)
        wait(todo, timeout)


PARTIALS = Background(64)  # header partials being written while the next task runs


# --- images ------------------------------------------------------------------------------
def read_image(uri: str):
    """The decoded image at ``uri``, or an ItemError saying why not (transient store errors
    raise: the task retries with backoff)."""
    img = IMAGES.get(uri, _MISS)
    if img is not _MISS:
        return img
    s = get_settings()
    try:
        data = open_store().get(uri, max_bytes=s.max_image_bytes)  # never reads a huge object
        img = decode_image(data, max_pixels=s.max_pixels, max_bytes=s.max_image_bytes)
    except OutsideStoreError as e:
        img = ItemError("outside_store", str(e))
    except TooLargeError as e:
        img = ItemError("file_too_large", str(e))
    except NotFoundError as e:
        img = ItemError("not_found", str(e))
    except TransientStoreError:
        raise
    except StoreError as e:
        img = ItemError("store_error", str(e))
    except ItemError as e:
        img = e
    IMAGES.put(uri, img)
    return img


def stream_images(items: list[Item], when_read: Callable[[], None] | None = None
                  ) -> Iterator[tuple[Item, object]]:
    """``(item, PIL image | ItemError)`` for items without an earlier error, in their order,
    each as soon as it is in memory: cached images at once (in this thread: they never wait
    behind the I/O threads' queue), the others read in parallel. ``when_read()`` is called
    once every image is in memory."""
    todo = [it for it in items if not it.error]
    got: dict = {}
    for it in todo:
        img = IMAGES.get(it.image, _MISS) if it.image else \
            ItemError("no_image", "item has no image URI")
        got[it.id] = POOL.submit(read_image, it.image) if img is _MISS else img
    reading = [f for f in got.values() if isinstance(f, Future)]
    for it in todo:
        if when_read and all(f.done() for f in reading):
            when_read()
            when_read = None
        img = got[it.id]
        yield it, img.result() if isinstance(img, Future) else img
    if when_read:
        when_read()


def read_images(items: list[Item]) -> dict[str, object]:
    """``id -> PIL image | ItemError`` for items without an earlier error; reads in parallel."""
    return {it.id: img for it, img in stream_images(items)}


# --- chunks and what their stages hand on --------------------------------------------------
def _put_partial(store, key: str, raw: bytes) -> None:
    try:
        store.put(key, raw, "application/json")
    except Exception as e:  # compose runs the stage again when its partial never lands
        log.warning("could not write %s: %s", key, e)


def fetch(ref: str, nonce) -> object:
    key = (open_store().uri, ref, nonce)
    obj = OBJECTS.get(key, _MISS)
    if obj is _MISS:
        raw = open_store().get(ref)
        obj = json.loads(raw)
        OBJECTS.put(key, obj, OBJECT_WEIGHT * len(raw))
    return obj


def load_chunk(msg: dict | Chunk) -> Chunk:
    """The chunk a task's message names: the chunk itself, or the ledger it points to."""
    if isinstance(msg, Chunk):
        return msg
    if "items" in msg or not msg.get("ref"):
        return Chunk.model_validate(msg)
    p = Pointer.model_validate(msg)
    ledger = dict(fetch(p.ref, p.nonce))
    ledger.pop("ids", None)
    return Chunk.model_validate({**ledger, "ref": p.ref, "nonce": p.nonce})


PARTIAL_WAIT_S = 10.0  # how long compose waits for a partial still being written


def load_partial(msg: dict) -> StagePartial | None:
    """A header task's output: the partial itself, or the stored partial it points to; the
    pointer's ``attempts``/``store_retries`` count (they were added after it was written).
    A header task writes its partial in the background (``hand_on``): compose waits for it
    a while, and None (the stage is run again, inline) when it never lands (its worker died
    first)."""
    if "results" in msg or not msg.get("ref"):
        return StagePartial.model_validate(msg)
    p = Pointer.model_validate(msg)
    deadline, pause = time.monotonic() + PARTIAL_WAIT_S, 0.05
    while True:
        try:
            raw = fetch(p.ref, p.nonce)
            break
        except NotFoundError:
            if time.monotonic() > deadline:
                return None
            time.sleep(pause)
            pause = min(1.0, pause * 2)
    part = StagePartial.model_validate(raw)
    return part.model_copy(update={k: getattr(p, k) for k in ("attempts", "store_retries")
                                   if getattr(p, k) is not None})


def load_state(msg: dict | ComposeState) -> ComposeState:
    """compose's records for generate: the state itself, or the stored state it points to
    (a fresh copy: generate edits its records)."""
    if isinstance(msg, ComposeState):
        return msg
    if "records" in msg or not msg.get("ref"):
        return ComposeState.model_validate(msg)
    p = Pointer.model_validate(msg)
    return ComposeState.model_validate(fetch(p.ref, p.nonce))


def part_key(chunk: Chunk, name: str) -> str:
    """Where a chunk's stage partial (``name``: ``caption:git``) or compose's records
    (``compose``) are handed on; deterministic, so a re-run overwrites them."""
    return f"runs/{chunk.batch}/parts/{chunk.chunk:06d}/{name.replace(':', '-')}.json"


def hand_on(chunk: Chunk, name: str, obj: StagePartial | ComposeState,
            background: bool = False) -> dict:
    """What a task returns: ``obj`` itself, or (for a chunk sent by reference) a pointer to
    ``obj`` written to the store under a deterministic key (a re-run overwrites it). This
    process keeps it in memory too, so a compose here never reads it back. ``background``
    (header partials): the write goes on while the next task runs; compose elsewhere waits
    for it (``load_partial``), and runs the stage again should it never land."""
    data = obj.dump()
    if not chunk.ref:
        return data
    key = part_key(chunk, name)
    raw = json.dumps(data, ensure_ascii=False).encode()
    store = open_store()
    OBJECTS.put((store.uri, key, chunk.nonce), data, OBJECT_WEIGHT * len(raw))
    if background:
        PARTIALS.submit(_put_partial, store, key, raw)
    else:
        store.put(key, raw, "application/json")
    return Pointer(ref=key, nonce=chunk.nonce, stage=getattr(obj, "stage", None)).model_dump(
        exclude_none=True)
