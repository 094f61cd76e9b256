"""Automatic device and dtype: CUDA with fp16 where present, CPU fp32 otherwise.

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
