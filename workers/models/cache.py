"""Per-process model cache: each (backend, weights, device, dtype) is loaded once per process.

Nothing is loaded at import time, and never in a parent process before it forks:
the worker loads on first use (or at process start with ``ITX_PRELOAD``).
"""
from __future__ import annotations

import threading

from workers.models.device import resolve_device, resolve_dtype
from workers.models.loader import resolve_model
from workers.models.profiles import model_ref
from workers.models.registry import get_backend_class
from workers.settings import get_settings

_CACHE: dict[tuple, object] = {}
_LOCK = threading.RLock()


def quiet() -> None:
    """No per-load progress bars from the libraries in worker logs."""
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for mod in ("transformers", "diffusers"):
        try:
            lg = __import__(f"{mod}.utils.logging", fromlist=["x"])
            lg.disable_progress_bar()
            # e.g. diffusers' per-batch "CLIP can only handle 77 tokens" notice: the text
            # encoder reads the first 77 tokens of a prompt, as documented in the README
            lg.set_verbosity_error()
        except Exception:
            pass


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
            cls = get_backend_class(stage, name)
            quiet()
            backend = cls()
            backend.ref = ref
            backend.load(resolve_model(ref), dev, dt)
            _CACHE[key] = backend
        return backend


def loaded() -> list[tuple]:
    return list(_CACHE)


def clear() -> None:
    with _LOCK:
        _CACHE.clear()
