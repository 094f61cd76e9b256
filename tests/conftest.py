"""Shared test fixtures. Tests run offline on CPU with the tiny-random profile.

Tiny checkpoints are built once into ``<repo>/.itx-models`` (or ``$ITX_MODEL_DIR``)
through the real builder and then loaded through the production loader.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL_DIR = Path(os.environ.get("ITX_MODEL_DIR") or REPO / ".itx-models")

os.environ.setdefault("ITX_MODEL_DIR", str(MODEL_DIR))
os.environ.setdefault("ITX_PROFILE", "tiny-random")
os.environ.setdefault("ITX_DEVICE", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def model_dir() -> Path:
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    return MODEL_DIR


@pytest.fixture(scope="session")
def photos():
    """A few real photos of different sizes and modes (scikit-image ships them offline)."""
    from PIL import Image
    from skimage import data

    astronaut = Image.fromarray(data.astronaut())              # 512x512 RGB
    coffee = Image.fromarray(data.coffee()).resize((300, 200))  # RGB, not square
    camera = Image.fromarray(data.camera()).resize((160, 240))  # L (grayscale)
    rgba = Image.fromarray(data.chelsea()).convert("RGBA").resize((97, 61))
    return [astronaut, coffee, camera, rgba]


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's models: on 2 shared cores, more threads only contend."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def python() -> str:
    return sys.executable
