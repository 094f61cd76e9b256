"""Automatic device and dtype: CUDA with fp16 where present, CPU fp32 otherwise; quiet
library logging.

torch is imported here lazily; CUDA is touched only in the process that calls this.
"""
from __future__ import annotations


def resolve_device(setting: str = "auto") -> str:
    import torch

    if setting == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if setting == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("ITX_DEVICE=cuda but no CUDA device is visible to this process")
    return setting


def resolve_dtype(device: str, setting: str = "auto"):
    import torch

    if setting == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    return getattr(torch, setting)


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
