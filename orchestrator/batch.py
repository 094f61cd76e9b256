"""A batch as the store knows it: status, results, progress. Works from any machine, after
Redis forgot everything (status and results are derived from the store)."""
from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import NamedTuple

from workers.records import ResultRecord
from workers.storage import StoreError, open_store


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
        self.name = name
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
        except StoreError:
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
             on_progress: Callable[[Progress], None] | None = None) -> dict:
        """Block until every chunk this process submitted has finished (``on_progress`` is
        called after each poll); return the batch's status."""
        t0 = time.monotonic()
        while True:
            prog = self.poll()
            if on_progress:
                on_progress(prog)
            if not self._pending:
                break
            if timeout is not None and time.monotonic() - t0 > timeout:
                raise TimeoutError(f"batch {self.name} not finished after {timeout} s")
            time.sleep(poll_s)
        from orchestrator.ops import auto_gc

        st = self.status()
        auto_gc(self, st)  # ITX_AUTO_GC: a finished batch's parts/ and ledgers go
        return st


