"""Operator controls that tasks obey: a batch's cancel marker, and the durable count of how
often a task's worker died while running it (poison chunks).

    runs/<batch>/cancel.json    written by ``itx cancel``; removed by ``itx submit --resume``
                                and ``itx retry``. Tasks check it before any work (with
                                the last reply at hand) and before every mini-batch; a
                                cancelled chunk writes no records, so a later resume runs
                                exactly the items that have none.

Redeliveries are counted in the result backend's Redis (``INCR`` on a key per task id, with
an expiry): Celery's ``redelivered`` flag only says "at least once".
"""
from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

from workers.settings import get_settings
from workers.storage import open_store

log = logging.getLogger(__name__)


class Cancelled(Exception):
    """The chunk's batch was cancelled: stop at this mini-batch boundary."""


def cancel_key(batch: str) -> str:
    return f"runs/{batch}/cancel.json"


_SEEN: dict[tuple[str, str], tuple[float, bool]] = {}  # (store, batch) -> (checked at, cancelled)
_TTL = 0.5  # seconds: a worker asks the store at most twice a second per batch
_STALE = 5.0  # an answer older than this is not used even once (ask the store first)
_asking: dict = {}  # key -> the Future of the background check reading its marker now
_lock = threading.Lock()
_ASK = ThreadPoolExecutor(max_workers=1, thread_name_prefix="itx-cancel")


def _ask(store, key: tuple[str, str], batch: str) -> bool:
    try:
        flag = store.exists(cancel_key(batch))
    except Exception as e:  # the store is down: go on (the task's own reads will retry)
        log.warning("could not read the cancel marker of %s: %s", batch, e)
        flag = _SEEN.get(key, (0, False))[1]
    _SEEN[key] = (time.monotonic(), flag)
    with _lock:
        _asking.pop(key, None)
    return flag


def _ask_in_background(store, key: tuple[str, str], batch: str) -> Future:
    with _lock:
        f = _asking.get(key)
        if f is None:
            f = _asking[key] = _ASK.submit(_ask, store, key, batch)
    return f


def is_cancelled(batch: str, fresh: bool = False, wait: bool = True) -> bool:
    """Whether ``batch`` carries a cancel marker. While a process works on a batch it asks
    the store twice a second in the background and answers from the last reply (no task
    waits on the store for it); a reply older than 5 s (or none yet) is waited for, and
    ``fresh`` asks now. ``wait=False``: never wait; without a recent reply, start asking
    and answer False (a task's first check, while its images are read; the check before
    its first mini-batch waits for the reply)."""
    store = open_store()
    key = (store.uri, batch)
    if fresh:
        return _ask(store, key, batch)
    hit = _SEEN.get(key)
    age = time.monotonic() - hit[0] if hit else None
    if age is None or age >= _STALE:
        asked = _ask_in_background(store, key, batch)
        return asked.result() if wait else False
    if age >= _TTL:
        _ask_in_background(store, key, batch)
    return hit[1]


def check(batch: str) -> None:
    """Raise :class:`Cancelled` when ``batch`` is cancelled (call between mini-batches)."""
    if is_cancelled(batch):
        raise Cancelled(batch)


# --- poison chunks -------------------------------------------------------------------------
def _redis(app):
    client = getattr(app.backend, "client", None)
    return client if client is not None and hasattr(client, "incr") else None


def delivery(task) -> int:
    """How many times ``task``'s worker died while running it so far: its redeliveries (a
    message that ended neither in success nor in a Celery retry comes back marked
    ``redelivered``: kombu's Redis transport marks each message it restores, RabbitMQ its
    requeued ones). The flag only says "at least once", so each redelivery is counted in
    Redis; a first delivery (a Celery retry is one too) costs no request. 0 without Redis
    (eager mode)."""
    app = task.app
    if app.conf.task_always_eager or not (task.request.delivery_info or {}).get("redelivered"):
        return 0
    client = _redis(app)
    if client is None:
        return 0
    key = f"itx:redeliveries:{task.request.id}"
    try:
        with client.pipeline() as p:
            p.incr(key)
            p.expire(key, 7 * 24 * 3600)
            return int(p.execute()[0])
    except Exception as e:  # Redis trouble must not stop the work
        log.warning("could not count deliveries of %s: %s", task.request.id, e)
        return 0


def poisoned(task) -> str | None:
    """A ``worker_lost`` error message when ``task`` already killed its worker
    ``ITX_MAX_WORKER_LOSSES`` times; else None (run it)."""
    lost = delivery(task)
    limit = get_settings().max_worker_losses
    if limit and lost >= limit:
        return (f"worker_lost: the worker process died {lost} times running this chunk "
                f"({task.name}); given up (ITX_MAX_WORKER_LOSSES={limit})")
    return None
