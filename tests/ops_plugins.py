"""Plugin backends for the operations tests (loaded by ``ITX_PLUGINS=tests.ops_plugins``).

    caption:slow     sleeps ITX_TEST_SLOW_S per mini-batch of 4 (or the seconds written in the
                     file ITX_TEST_SLOW_FILE, while it exists: a test changes the pace of a
                     running worker) and logs each call (time, n) to ITX_TEST_CALLS: long
                     batches for cancel, a call count for reuse
    caption:poison   kills its pool process (os._exit) on a 13x13 image while the file
                     ITX_TEST_POISON exists: a poison chunk
"""
from __future__ import annotations

import os
import time
from pathlib import Path

from workers.stages import table
from workers.stages.base import Backend


def _slow_s() -> float:
    f = os.environ.get("ITX_TEST_SLOW_FILE")
    if f:
        try:
            return float(Path(f).read_text())
        except (OSError, ValueError):
            pass
    return float(os.environ.get("ITX_TEST_SLOW_S", "0.3"))


class Slow(Backend):
    def load(self, ref, device, dtype):
        self.device = device

    def __call__(self, images):
        log = os.environ.get("ITX_TEST_CALLS")
        if log:
            with open(log, "a") as f:
                f.write(f"{time.time()} {len(images)}\n")
        time.sleep(_slow_s())
        return [f"an image of {im.size[0]}x{im.size[1]} pixels" for im in images]


class Poison(Backend):
    def load(self, ref, device, dtype):
        self.device = device

    def __call__(self, images):
        flag = os.environ.get("ITX_TEST_POISON")
        if flag and Path(flag).exists() and any(im.size == (13, 13) for im in images):
            os._exit(1)  # what the OOM killer or a segfault in a decoder looks like
        return [f"fine {im.size[0]}" for im in images]


_BUILTIN = {"base": "builtin", "tiny-random": "builtin"}
table.declare("caption", "slow", "tests.ops_plugins:Slow", _BUILTIN, batch={"cpu": 4, "cuda": 4},
              about="test: slow on purpose")
table.declare("caption", "poison", "tests.ops_plugins:Poison", _BUILTIN,
              batch={"cpu": 4, "cuda": 4}, about="test: kills its process on 13x13 images")
