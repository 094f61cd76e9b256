"""``Backend.run`` and the stage runner: mini-batches that run out of GPU memory are halved,
and a mini-batch that fails is retried item by item so one bad item costs only itself."""
from __future__ import annotations

import pytest


def test_out_of_memory_retries_with_smaller_mini_batches():
    """A backend that runs out of GPU memory above 2 items a batch still gets every item done:
    ``Backend.run`` halves the mini-batch and goes on."""
    from typing import ClassVar

    import torch

    from workers.stages.base import Backend

    class Picky(Backend):
        stage, name = "caption", "picky"
        calls: ClassVar[list[int]] = []

        def __call__(self, images):
            self.calls.append(len(images))
            if len(images) > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB")
            return [f"caption {x}" for x in images]

    b = Picky()
    assert b.run(list(range(7)), batch_size=8) == [f"caption {i}" for i in range(7)]
    assert b.calls == [7, 4, 2, 2, 2, 1]
    with pytest.raises(ValueError):  # anything else is not swallowed
        Picky.__call__ = lambda self, images: (_ for _ in ()).throw(ValueError("bad"))
        b.run([1, 2], batch_size=8)


def test_a_failing_batch_is_retried_item_by_item_so_one_bad_item_costs_only_itself():
    """A model that fails on one input fails its whole mini-batch; the stage runner then runs
    the batch's items one by one: the bad one gets a `stage_failed` error, the rest results."""
    from workers.pipeline.run import run_isolated
    from workers.images import ItemError
    from workers.stages.base import Backend

    class Fragile(Backend):
        stage, name = "generate", "fragile"

        def __call__(self, prompts, sources, seeds, *, n):
            if "poison" in prompts:
                raise RuntimeError("NaN in the latents")
            assert sources is None
            return [[f"{p}:{s}"] * n for p, s in zip(prompts, seeds)]

    outs, ms = run_isolated(Fragile(), "generate:fragile",
                            [["a", "poison", "c"], None, [1, 2, 3]], {"n": 2})
    assert outs[0] == ["a:1", "a:1"] and outs[2] == ["c:3", "c:3"]
    assert isinstance(outs[1], ItemError) and outs[1].kind == "stage_failed"
    assert "NaN in the latents" in str(outs[1]) and ms >= 0
