"""Image bytes -> RGB PIL image, with limits and specific errors.

Every way an input can be bad gets its own error kind, so a result record says
exactly what was wrong and ``itx status`` can count failures by reason.
"""
from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

EXTENSIONS = {".jpg", ".jpeg", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff"}
# the only decoders untrusted bytes reach (docs/security.md): Pillow's others (PSD, EPS, which
# runs Ghostscript, FITS, ICO, …) are never tried
FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")


def _other_format(data: bytes) -> str | None:
    """The name of a Pillow format outside FORMATS whose signature the bytes carry (its
    ``accept`` test looks at the first bytes only; nothing is decoded), else None."""
    Image.init()
    prefix = data[:16]
    for fmt, (_factory, accept) in Image.OPEN.items():
        if fmt in FORMATS or accept is None:
            continue
        try:
            if accept(prefix):
                return fmt
        except Exception:
            continue
    return None


class ItemError(Exception):
    """An error that belongs to one item; ``kind`` is a short stable code."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind}: {self.message}"


def decode_image(data: bytes, *, max_pixels: int, max_bytes: int | None = None) -> Image.Image:
    """Decode, apply EXIF orientation, take a GIF's first frame, convert any mode to RGB."""
    if not data:
        raise ItemError("empty_file", "the file is empty (0 bytes)")
    if max_bytes and len(data) > max_bytes:
        raise ItemError("file_too_large", f"{len(data)} bytes is over the limit of {max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=FORMATS)
            w, h = img.size
            if w * h > max_pixels:
                raise ItemError("too_many_pixels",
                                f"{w}x{h} = {w * h} pixels is over the limit of {max_pixels}")
            if w < 1 or h < 1:
                raise ItemError("bad_dimensions", f"image has size {w}x{h}")
            img.seek(0)  # animated GIF/WebP: first frame
            img.load()
    except ItemError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ItemError("too_many_pixels", f"decompression bomb: {e}") from None
    except UnidentifiedImageError:
        other = _other_format(data)
        if other:
            raise ItemError("unsupported_format", f"{other} images are not read (only "
                            f"{', '.join(FORMATS)})") from None
        raise ItemError("not_an_image", "the file is not an image in a supported format") from None
    except OSError as e:
        msg = str(e)
        if "truncated" in msg.lower() or "broken data stream" in msg.lower():
            raise ItemError("truncated_image", f"the image data is truncated ({msg})") from None
        raise ItemError("corrupt_image", f"the image cannot be decoded ({msg})") from None
    except (ValueError, SyntaxError) as e:
        raise ItemError("corrupt_image", f"the image cannot be decoded ({e})") from None
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    try:
        img = ImageOps.exif_transpose(img)
    except Exception:  # a broken EXIF block should not lose the image
        pass
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        bg = Image.new("RGB", rgba.size, (255, 255, 255))
        bg.paste(rgba, mask=rgba.getchannel("A"))
        return bg
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        hi = a.max() if a.size and a.max() > 255 else 255.0
        a = (a / (65535.0 if hi > 255 else 255.0) * 255.0).clip(0, 255).astype("uint8")
        return Image.fromarray(a, "L").convert("RGB")
    if mode == "F":
        import numpy as np

        a = np.asarray(img, dtype=np.float64)
        lo, hi = (a.min(), a.max()) if a.size else (0.0, 1.0)
        a = ((a - lo) / ((hi - lo) or 1.0) * 255).astype("uint8")
        return Image.fromarray(a, "L").convert("RGB")
    return img.convert("RGB")
