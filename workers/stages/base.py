"""The backend shape every stage shares (in the spirit of LitServe's LitAPI).

A backend is a small class: ``load(ref, device, dtype)`` once per process, then
``__call__(batch...)`` on one mini-batch. ``run`` splits any number of items into
mini-batches, checks that each batch returns one output per input, and on a GPU
out-of-memory error retries that batch with half the size.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any, ClassVar

log = logging.getLogger(__name__)

# Seconds this process has spent inside backends' model calls (``__call__`` of a mini-batch,
# all stages). A measurement hook for benchmarks/pipeline.py (model-busy share of a worker):
# with ITX_MODEL_TIME_DIR set, each process also keeps the running total in
# ``<dir>/<pid>`` (one small write per mini-batch). Unset, it costs two clock reads.
model_seconds = 0.0
_TIME_DIR = os.environ.get("ITX_MODEL_TIME_DIR")


def _count_model_time(seconds: float) -> None:
    global model_seconds
    model_seconds += seconds
    if _TIME_DIR:
        try:
            with open(os.path.join(_TIME_DIR, str(os.getpid())), "w") as f:
                f.write(f"{model_seconds:.6f}")
        except OSError:
            pass


class Backend:
    stage: ClassVar[str] = ""
    name: ClassVar[str] = ""
    # mini-batch size per device type; a model knob, so it lives on the class
    batch_size: ClassVar[dict[str, int]] = {"cpu": 8, "cuda": 32}

    ref: str = ""
    decl: Any = None  # its declaration in the stage table (set by the model cache)
    device: str = "cpu"
    dtype: Any = None

    def load(self, ref: str, device: str, dtype) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, *columns: list, **kwargs) -> list:  # pragma: no cover - interface
        raise NotImplementedError

    def spec_kwargs(self, spec) -> dict:
        """Options this backend takes from the pipeline spec (keyword arguments of
        ``__call__``), e.g. a chat VLM's prompt; most backends take none."""
        return {}

    @property
    def max_batch(self) -> int:
        return self.batch_size.get(self.device.split(":")[0], self.batch_size.get("cpu", 8))

    def run(self, *columns: list | None, batch_size: int | None = None, **kwargs) -> list:
        """Apply the backend to every item, ``batch_size`` items per call.

        ``columns`` are parallel lists (e.g. images and questions); ``None`` passes through.
        """
        n = len(columns[0])
        for c in columns:
            if c is not None and len(c) != n:
                raise ValueError(f"{self.stage}:{self.name}: input columns differ in length")
        bs = max(1, batch_size or self.max_batch)
        out: list = []
        i = 0
        while i < n:
            part = [None if c is None else c[i:i + bs] for c in columns]
            t = time.perf_counter()
            try:
                res = self(*part, **kwargs)
            except Exception as e:  # GPU OOM: retry this batch smaller, then go on
                if _is_oom(e) and bs > 1:
                    bs = max(1, bs // 2)
                    log.warning("%s:%s out of memory; retrying with batch size %d",
                                self.stage, self.name, bs)
                    _empty_cache()
                    continue
                raise
            finally:
                _count_model_time(time.perf_counter() - t)
            got = len(res)
            want = len(part[0])
            if got != want:
                raise RuntimeError(
                    f"{self.stage}:{self.name} returned {got} outputs for a batch of {want}; "
                    f"__call__ must return exactly one output per input"
                )
            out.extend(res)
            i += want
        return out


def _is_oom(e: BaseException) -> bool:
    try:
        import torch

        if isinstance(e, torch.cuda.OutOfMemoryError):
            return True
    except Exception:
        pass
    return "out of memory" in str(e).lower()


def _empty_cache() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass
