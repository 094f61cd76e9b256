"""A corpus of good, odd and bad image files, written by the tests themselves.

``write_corpus(dir)`` returns ``{name: (path, expected)}`` where ``expected`` is
``("ok", (w, h))`` for inputs that must decode (to RGB, at that size) or
``("error", kind)`` for inputs that must fail with that error kind.
"""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def _photo(w=96, h=64) -> Image.Image:
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(x * 255 // max(1, w - 1)), (y * 255 // max(1, h - 1)),
                  ((x + y) * 127 // max(1, w + h - 2))], -1).astype("uint8")
    return Image.fromarray(a, "RGB")


def _png_header_only(w: int, h: int) -> bytes:
    """A PNG whose header claims w x h pixels, with almost no data (a decompression bomb)."""
    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def write_corpus(d: Path) -> dict[str, tuple[Path, tuple]]:
    d.mkdir(parents=True, exist_ok=True)
    out: dict[str, tuple[Path, tuple]] = {}

    def save(name, img, fmt=None, expected=None, **kw):
        p = d / name
        img.save(p, format=fmt, **kw)
        out[name] = (p, expected or ("ok", img.size))

    photo = _photo()
    save("photo.jpg", photo, "JPEG", quality=90)
    save("photo.png", photo, "PNG")
    save("photo.webp", photo, "WEBP")
    save("photo.bmp", photo, "BMP")
    save("photo.tiff", photo, "TIFF")
    save("rgba.png", photo.convert("RGBA"), "PNG")
    save("gray.png", photo.convert("L"), "PNG")
    pal = photo.convert("P", palette=Image.ADAPTIVE)
    save("palette-transparent.png", pal, "PNG", transparency=0)
    save("cmyk.jpg", photo.convert("CMYK"), "JPEG")
    a16 = (np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    save("sixteen-bit.png", Image.frombytes("I;16", photo.size, a16.astype("<u2").tobytes()), "PNG")
    save("one-pixel.png", Image.new("RGB", (1, 1), (200, 10, 10)), "PNG")
    frames = [_photo(40, 30), _photo(40, 30).transpose(Image.FLIP_LEFT_RIGHT)]
    p = d / "animated.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100, loop=0)
    out["animated.gif"] = (p, ("ok", (40, 30)))
    # EXIF orientation 6: stored 96x64, shown rotated 90 degrees -> 64x96
    exif = Image.Exif()
    exif[0x0112] = 6
    p = d / "exif-rotated.jpg"
    photo.save(p, "JPEG", exif=exif.tobytes())
    out["exif-rotated.jpg"] = (p, ("ok", (64, 96)))
    # a PNG named .jpg: the content decides, not the name
    p = d / "png-named.jpg"
    photo.save(p, "PNG")
    out["png-named.jpg"] = (p, ("ok", photo.size))

    # --- bad ones ---
    (d / "empty.jpg").write_bytes(b"")
    out["empty.jpg"] = (d / "empty.jpg", ("error", "empty_file"))
    (d / "not-an-image.png").write_text("this is a text file, not a picture\n")
    out["not-an-image.png"] = (d / "not-an-image.png", ("error", "not_an_image"))
    buf = io.BytesIO()
    _photo(400, 300).save(buf, "JPEG", quality=95)
    (d / "truncated.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 3])
    out["truncated.jpg"] = (d / "truncated.jpg", ("error", "truncated_image"))
    (d / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    out["bomb.png"] = (d / "bomb.png", ("error", "too_many_pixels"))
    # formats Pillow could decode but itx does not read (docs/security.md): refused by name,
    # their decoders never run on the bytes
    (d / "layers.psd").write_bytes(b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + b"\x00" * 64)
    out["layers.psd"] = (d / "layers.psd", ("error", "unsupported_format"))
    for fmt, name in (("EPS", "vector.eps"), ("ICO", "icon.ico"), ("PCX", "old.pcx"),
                      ("PPM", "netpbm.jpg")):
        save(name, _photo(32, 32), fmt, expected=("error", "unsupported_format"))
    return out
