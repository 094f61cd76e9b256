"""A batch as the store knows it: status, results, progress. Works from any machine, after
Redis forgot everything (status and results are derived from the store)."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from orchestrator.names import check_name
from workers.records import ResultRecord
from workers.storage import NotFoundError, StoreError, open_store


class BatchError(RuntimeError):
    """A problem with a batch as a whole (exists already, unknown, …)."""


class Progress(NamedTuple):
    """Items of the chunks one process submitted: finished (with a record), failed among
    them, total, and how many of those were found done at submission."""

    finished: int
    failed: int
    total: int
    already_done: int


class Batch:
    """A batch as the store knows it. Works from any machine, after Redis forgot everything."""

    def __init__(self, name: str, store=None, app=None):
        try:
            self.name = check_name(name)
        except ValueError as e:
            raise BatchError(str(e)) from None
        self.store = store or open_store()
        self.app = app
        self.prefix = f"runs/{name}"
        self._pending: list = []  # (chunk result, items) submitted by this process
        self.submitted = 0  # items this process submitted
        self.already_done = 0  # items found done when this process submitted
        self._finished = 0  # items of this process's chunks that have a record, and failed
        self._failed = 0

    # --- what the store says ------------------------------------------------------------
    def exists(self) -> bool:
        return self.store.exists(f"{self.prefix}/batch.json")

    def meta(self) -> dict:
        try:
            return self.store.get_json(f"{self.prefix}/batch.json")
        except NotFoundError:  # other store errors (unreachable, denied) say so themselves
            raise BatchError(f"no batch {self.name!r} in {self.store.uri}") from None

    def submitted_ids(self) -> list[str]:
        from orchestrator.ops import kept_ids

        seen: dict[str, None] = dict.fromkeys(kept_ids(self))  # what `itx gc` kept of ledgers
        for key in self.store.list(f"{self.prefix}/chunks/"):
            for i in self.store.get_json(key)["ids"]:
                seen.setdefault(i)
        return list(seen)

    def result_ids(self) -> set[str]:
        return {k.rsplit("/", 1)[-1][:-5] for k in self.store.list(f"{self.prefix}/results/")
                if k.endswith(".json")}

    def record(self, item_id: str) -> ResultRecord:
        return ResultRecord.model_validate(
            self.store.get_json(f"{self.prefix}/results/{item_id}.json"))

    def records(self, ids: Iterable[str] | None = None) -> Iterator[ResultRecord]:
        """Result records (validated), in submission order (each id once)."""
        ids = self.submitted_ids() if ids is None else ids
        done = self.result_ids()
        keys = [i for i in ids if i in done]
        with ThreadPoolExecutor(max_workers=16) as pool:
            yield from pool.map(self.record, keys)

    def results(self, ids: Iterable[str] | None = None) -> Iterator[dict]:
        """Result records as JSON-able dicts (what manifests hold), in submission order."""
        for rec in self.records(ids):
            yield rec.dump()

    def status(self) -> dict:
        meta = self.meta()
        submitted = self.submitted_ids()
        done_ids = self.result_ids()
        reasons: Counter = Counter()
        ok = failed = 0
        first = last = None
        for rec in self.records([i for i in submitted if i in done_ids]):
            if rec.error:
                failed += 1
                reasons[rec.kind] += 1
            else:
                ok += 1
            t = rec.finished_at
            if t:
                first = t if first is None or t < first else first
                last = t if last is None or t > last else last
        total = len(submitted)
        finished = ok + failed
        rate = None
        if first and last and last > first and finished > 1:
            rate = finished / (last - first)
        return {"batch": self.name, "total": total, "done": ok, "failed": failed,
                "pending": total - finished, "failures": dict(reasons.most_common()),
                "items_per_s": rate, "created": meta.get("created"), "last_finished_at": last,
                "complete": total > 0 and finished == total}

    # --- progress of what this process submitted ---------------------------------------
    def track(self, result, n: int) -> None:
        """Follow a chunk this process enqueued (its canvas's result) of ``n`` items."""
        self._pending.append((result, n))
        self.submitted += n

    def skip_done(self, n: int = 1) -> None:
        """Count items found with a record already (not submitted again)."""
        self.already_done += n

    @property
    def busy(self) -> bool:
        """Whether a chunk this process submitted has not finished yet."""
        return bool(self._pending)

    def poll(self, window: int = 256) -> Progress:
        """Progress of the chunks submitted by this process, plus items found done at
        submission. Cheap at any size: each call reads the state of at most ``window``
        pending chunks, oldest first (chunks finish roughly in order)."""
        done = failed = 0
        still = []
        for res, n in self._pending[:window]:
            # state and result are plain reads of the result backend; .get() would also
            # subscribe to every result in the chain and hold it until exit
            if res.ready():
                summary = res.result if res.successful() else None
                if isinstance(summary, dict):
                    done += summary["done"]
                    failed += summary["failed"]
                else:
                    failed += n
            else:
                still.append((res, n))
        self._pending = still + self._pending[window:]
        self._finished += done + failed
        self._failed += failed
        return Progress(self._finished + self.already_done, self._failed,
                        self.submitted + self.already_done, self.already_done)

    def wait(self, poll_s: float = 1.0, timeout: float | None = None,
             on_progress: Callable[[Progress], None] | None = None,
             stall_s: float | None = None, reconnect_s: float | None = None) -> dict:
        """Block until every chunk this process submitted has finished (``on_progress`` is
        called after each poll); return the batch's status, whose ``pending`` may be > 0.

        A lost result backend (Redis restarting) is ridden out: polls back off up to 10 s and
        go on once it answers, for ``reconnect_s`` (ITX_WAIT_RECONNECT_S) at most, then
        ``BatchError``. When nothing finishes for a while, the store is asked: every item
        with a record ends the wait (a chunk whose result was lost in an outage); nothing
        finishing for ``stall_s`` (ITX_WAIT_STALL_S) ends it with items pending."""
        from workers.settings import get_settings

        s = get_settings()
        if reconnect_s is None:
            reconnect_s = s.wait_reconnect_s
        if stall_s is None:
            stall_s = s.wait_stall_s or (s.visibility_timeout or 2 * max(
                s.light_time_limit, s.heavy_time_limit) + 600) + s.heavy_time_limit
        look = min(30.0, stall_s / 2)  # how often a stalled wait asks the store
        t0 = last_change = last_look = time.monotonic()
        seen, down_since, backoff = None, None, poll_s
        while True:
            try:
                prog = self.poll()
            except _backend_errors() as e:
                now = time.monotonic()
                down_since = down_since or now
                if now - down_since > reconnect_s:
                    why = (str(e).splitlines() or [type(e).__name__])[0]
                    raise BatchError(
                        f"lost the result backend for {reconnect_s:.0f} s ({why}); the batch "
                        f"goes on without this command: see `itx status {self.name}`, or "
                        f"`itx submit --batch {self.name} --resume --wait` later") from None
                time.sleep(backoff)
                backoff = min(10.0, backoff * 2)
                continue
            down_since, backoff = None, poll_s
            if on_progress:
                on_progress(prog)
            if not self._pending:
                break
            now = time.monotonic()
            if prog.finished != seen:
                seen, last_change = prog.finished, now
            elif now - last_change > look and now - last_look > look:
                last_look = now
                if self._all_recorded():
                    break
                if now - last_change > stall_s:
                    break  # the caller sees items pending
            if timeout is not None and now - t0 > timeout:
                raise TimeoutError(f"batch {self.name} not finished after {timeout} s")
            time.sleep(poll_s)
        from orchestrator.ops import auto_gc

        st = self.status()
        auto_gc(self, st)  # ITX_AUTO_GC: a finished batch's parts/ and ledgers go
        return st

    def _all_recorded(self) -> bool:
        try:
            return set(self.submitted_ids()) <= self.result_ids()
        except StoreError:
            return False


def _backend_errors() -> tuple[type[BaseException], ...]:
    """What a result backend or broker raises while it is down or restarting."""
    errs: list[type[BaseException]] = [ConnectionError, OSError, TimeoutError]
    try:
        from kombu.exceptions import OperationalError

        errs.append(OperationalError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from redis.exceptions import RedisError

        errs.append(RedisError)
    except ImportError:  # pragma: no cover
        pass
    try:
        from celery.exceptions import BackendError

        errs.append(BackendError)
    except ImportError:  # pragma: no cover
        pass
    return tuple(errs)
