"""Per-process model cache: each (backend, weights, device, dtype) is loaded once per process.

Nothing is loaded at import time, and never in a parent process before it forks:
the worker loads on first use (or at process start with ``ITX_PRELOAD``).
"""
from __future__ import annotations

import threading

from workers.models.device import quiet, resolve_device, resolve_dtype
from workers.models.loader import resolve_model
from workers.models.profiles import model_ref
from workers.settings import get_settings
from workers.stages import table

_CACHE: dict[tuple, object] = {}
_LOCK = threading.RLock()


def load_backend(stage: str, name: str, *, ref: str | None = None, profile: str | None = None,
                 device: str | None = None, dtype: str | None = None):
    """Return the loaded backend instance for ``stage``/``name``, loading it on first use."""
    s = get_settings()
    ref = ref or model_ref(stage, name, profile or s.profile)
    dev = resolve_device(device or s.device)
    dt = resolve_dtype(dev, dtype or s.dtype)
    key = (stage, name, ref, dev, str(dt))
    with _LOCK:
        backend = _CACHE.get(key)
        if backend is None:
            decl = table.get(stage, name)
            quiet()
            backend = decl.load_class()()
            backend.ref, backend.batch_size, backend.decl = ref, decl.batch, decl
            backend.load(resolve_model(ref), dev, dt)
            _CACHE[key] = backend
        return backend


def loaded() -> list[tuple]:
    return list(_CACHE)


def clear() -> None:
    with _LOCK:
        _CACHE.clear()
