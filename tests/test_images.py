"""Decoding: every supported format and mode becomes RGB; every bad file its own error."""
import pytest

from tests.corpus import write_corpus
from workers.images import ItemError, decode_image


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"))


def test_every_corpus_file_decodes_or_fails_specifically(corpus):
    for name, (path, (kind, expected)) in corpus.items():
        data = path.read_bytes()
        if kind == "ok":
            img = decode_image(data, max_pixels=40_000_000)
            assert img.mode == "RGB", name
            assert img.size == expected, name
        else:
            with pytest.raises(ItemError) as e:
                decode_image(data, max_pixels=40_000_000)
            assert e.value.kind == expected, (name, str(e.value))


def test_transparent_pixels_become_white(corpus):
    from PIL import Image

    p = corpus["rgba.png"][0].parent / "clear.png"
    Image.new("RGBA", (4, 4), (255, 0, 0, 0)).save(p)
    assert decode_image(p.read_bytes(), max_pixels=100).getpixel((0, 0)) == (255, 255, 255)


def test_byte_and_pixel_limits(corpus):
    data = corpus["photo.png"][0].read_bytes()
    with pytest.raises(ItemError, match="over the limit") as e:
        decode_image(data, max_pixels=100)
    assert e.value.kind == "too_many_pixels"
    with pytest.raises(ItemError) as e:
        decode_image(data, max_pixels=10**8, max_bytes=10)
    assert e.value.kind == "file_too_large"
