"""Generate stage: tiny-random SD, SD img2img and DeepFloyd IF through the real loader and cache."""
from __future__ import annotations

import numpy as np
import pytest

from workers.models.cache import load_backend
from workers.stages.generate import image_seed, item_seeds, resolve_size

PROMPTS = ["a photo of a cat", "a red street sign", "the sky over a tree, watercolor"]
STEPS = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def sd(model_dir):
    return load_backend("generate", "sd")


@pytest.fixture(scope="module")
def img2img(sd):
    return load_backend("generate", "sd-img2img")


def px(im) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


def assert_same_up_to_rounding(a, b):
    """Batched and one-by-one runs draw the same noise; the UNet's float sums may differ
    in the last bit with the batch shape, which can move a few pixels by one level."""
    d = np.abs(px(a) - px(b))
    assert d.max() <= 2, d.max()
    assert (d > 0).mean() < 0.01, (d > 0).mean()


def test_resolve_size():
    assert resolve_size("512x512") == (512, 512)
    assert resolve_size(" 64X48 ") == (64, 48)
    for bad in ("500x512", "512", "axb", "0x64", "64x-8"):
        with pytest.raises(ValueError):
            resolve_size(bad)
    with pytest.raises(ValueError, match="multiple of 8"):
        resolve_size("100x64")


def test_item_seeds():
    assert item_seeds(10, range(3)) == [10, 11, 12]
    by_id = item_seeds(10, ["x", "y"])
    assert by_id == item_seeds(10, ["x", "y"]) and by_id[0] != by_id[1]
    assert item_seeds(10, ["x"]) != item_seeds(11, ["x"])
    assert image_seed(5, 0) == 5 and image_seed(5, 1) != image_seed(6, 0)


@pytest.mark.parametrize("size", [(64, 48), (32, 32)])
def test_sd_returns_n_images_of_requested_size(sd, size):
    w, h = size
    out = sd.run(PROMPTS, None, item_seeds(0, range(3)), width=w, height=h, steps=STEPS, n=2)
    assert len(out) == len(PROMPTS)
    for imgs in out:
        assert len(imgs) == 2
        for im in imgs:
            assert im.size == (w, h) and im.mode == "RGB"
            assert px(im).std() > 1  # a picture, not a flat fill
        assert np.abs(px(imgs[0]) - px(imgs[1])).mean() > 1  # the n images differ


def test_sd_seed_determinism(sd):
    kw = {"width": 32, "height": 32, "steps": STEPS}
    a = sd.run(PROMPTS, None, [1, 2, 3], **kw)
    b = sd.run(PROMPTS, None, [1, 2, 3], **kw)
    c = sd.run(PROMPTS, None, [4, 5, 6], **kw)
    for x, y, z in zip(a, b, c):
        assert np.array_equal(px(x[0]), px(y[0]))
        assert np.abs(px(x[0]) - px(z[0])).mean() > 1


def test_sd_batch_size_does_not_change_pixels(sd):
    seeds = item_seeds(42, range(3))
    kw = {"width": 64, "height": 48, "steps": STEPS, "n": 2}
    batched = sd.run(PROMPTS, None, seeds, batch_size=3, **kw)
    single = sd.run(PROMPTS, None, seeds, batch_size=1, **kw)
    for x, y in zip(batched, single):
        for u, v in zip(x, y):
            assert_same_up_to_rounding(u, v)
    # an item's pixels do not depend on which other items share its batch
    alone = sd.run(PROMPTS[2:], None, seeds[2:], batch_size=1, **kw)
    assert_same_up_to_rounding(alone[0][1], batched[2][1])


def test_img2img_shares_sd_components(sd, img2img):
    assert img2img.pipe.unet is sd.pipe.unet
    assert img2img.pipe.vae is sd.pipe.vae
    assert img2img.pipe.text_encoder is sd.pipe.text_encoder
    assert type(img2img.pipe).__name__ == "StableDiffusionImg2ImgPipeline"


def test_img2img_depends_on_source_and_returns_size(img2img, photos):
    prompts = ["a cat"] * 4
    seeds = [7] * 4
    out = img2img.run(prompts, photos, seeds, width=64, height=48, steps=STEPS, strength=0.6)
    assert [len(o) for o in out] == [1] * 4
    assert all(o[0].size == (64, 48) for o in out)
    # same prompt and seed, different source image -> different output
    for k in range(1, 4):
        assert np.abs(px(out[0][0]) - px(out[k][0])).mean() > 1
    # and the same source reproduces, one by one or batched
    again = img2img.run(prompts[:2], photos[:2], seeds[:2], batch_size=1, width=64, height=48,
                        steps=STEPS, strength=0.6)
    assert_same_up_to_rounding(again[1][0], out[1][0])


def test_img2img_needs_source_and_low_strength_still_runs(img2img, photos):
    with pytest.raises(ValueError, match="source image"):
        img2img.run(["a"], None, [0], width=32, height=32, steps=2)
    out = img2img.run(["a"], photos[:1], [0], width=32, height=32, steps=2, strength=0.2)
    assert out[0][0].size == (32, 32)


def test_seeds_column_is_required(sd):
    with pytest.raises(ValueError, match="seeds"):
        sd(["a"], None, None, width=32, height=32, steps=2)


def test_if_returns_requested_size():
    fi = load_backend("generate", "if")
    out = fi.run(PROMPTS, None, item_seeds(0, range(3)), width=64, height=48, steps=STEPS, n=2)
    assert len(out) == 3
    for imgs in out:
        assert len(imgs) == 2 and all(im.size == (64, 48) for im in imgs)
    again = fi.run(PROMPTS[:1], None, item_seeds(0, range(1)), width=64, height=48, steps=STEPS, n=2)
    assert_same_up_to_rounding(again[0][0], out[0][0])
