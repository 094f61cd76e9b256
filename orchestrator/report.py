"""Look at what a batch produced: an HTML gallery and a contact-sheet PNG.

``write_report(records, out_dir)`` writes a self-contained gallery (inline CSS and
JS, nothing fetched from elsewhere): one card per item with its input thumbnail, OCR
text, every caption by model, VQA answers, the final prompt, the generated images and,
in plain sight, its error. Buttons (or ``#failed`` / ``#ok`` in the address) show only
failed or succeeded items. Pages hold ``page_size`` cards: ``index.html``,
``page-2.html``, …; every failure of the batch is also listed on ``failed.html``.
Records stream through: memory stays one page, whatever the batch size.

Images are not copied: ``resolve_image(uri)`` turns a record's URI into the ``src``
of an ``<img>``. ``default_resolver(out_dir)`` gives paths relative to the report for
``file://`` URIs and local paths and keeps ``http(s)`` URLs; for ``s3://`` pass a
resolver that presigns (``open_store(uri).presign``) or the image shows as its URI.

Every string from a record (captions, OCR text, prompts, errors, even ids) is
HTML-escaped; URLs with a scheme other than http(s)/file are dropped.

``contact_sheet(records, path)`` is the quick look: one row per item, its input
beside its outputs, the prompt (or the error) printed under the row.
"""
from __future__ import annotations

import html
import itertools
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlparse

__all__ = ["contact_sheet", "default_loader", "default_resolver", "is_failed", "write_report"]

Resolver = Callable[[str], "str | None"]
MAX_FAILED_LISTED = 1000


# ----------------------------------------------------------------------------
# record helpers
# ----------------------------------------------------------------------------
def is_failed(record: dict) -> bool:
    """A record failed when it carries an error (or says ``status: failed``)."""
    return bool(record.get("error")) or record.get("status") in ("failed", "error")


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, indent=1, default=str)


def _ocr_text(record: dict) -> str:
    ocr = record.get("ocr")
    if isinstance(ocr, dict):
        return _text(ocr.get("text"))
    return _text(ocr)


def _local_path(uri: str) -> Path | None:
    """The local file for a ``file://`` URI or a plain path; ``None`` for other schemes."""
    u = urlparse(uri)
    if u.scheme == "file":
        # file:///abs and file://./rel (as ITX_STORE allows)
        return Path(unquote(u.netloc + u.path) if u.netloc in (".", "..") else unquote(u.path))
    if u.scheme and len(u.scheme) > 1:  # a one-letter scheme is a Windows drive
        return None
    return Path(uri)


# ----------------------------------------------------------------------------
# image URLs
# ----------------------------------------------------------------------------
def default_resolver(out_dir: str | Path) -> Resolver:
    """``file://`` URIs and local paths → paths relative to ``out_dir``; http(s) kept as is;
    anything else (``s3://``) → ``None`` (shown as text). Nothing is copied."""
    base = Path(out_dir).resolve()

    def resolve(uri: str) -> str | None:
        if not uri:
            return None
        if urlparse(uri).scheme in ("http", "https"):
            return uri
        path = _local_path(uri)
        if path is None:
            return None
        rel = os.path.relpath(path.resolve(), base)
        return quote(Path(rel).as_posix())

    return resolve


def _safe_src(url: str | None) -> str | None:
    if not url:
        return None
    scheme = urlparse(url).scheme.lower()
    if scheme and scheme not in ("http", "https", "file") and len(scheme) > 1:
        return None  # javascript:, data:, vbscript: … never reach an href
    return url


# ----------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------
_CSS = """
:root{--bg:#f5f5f4;--card:#fff;--ink:#1c1917;--mute:#78716c;--line:#e7e5e4;--bad:#b91c1c;--badbg:#fef2f2;--ok:#15803d}
*{box-sizing:border-box}body{margin:0;font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;background:var(--bg);color:var(--ink)}
header{position:sticky;top:0;z-index:2;background:var(--card);border-bottom:1px solid var(--line);padding:10px 20px;display:flex;flex-wrap:wrap;gap:8px 20px;align-items:center}
header h1{font-size:18px;margin:0}.summary{color:var(--mute)}.summary b.bad{color:var(--bad)}
.filters button{font:inherit;border:1px solid var(--line);background:var(--bg);border-radius:6px;padding:3px 10px;cursor:pointer}
.filters button[aria-pressed=true]{background:var(--ink);color:#fff;border-color:var(--ink)}
nav.pages{display:flex;flex-wrap:wrap;gap:4px}nav.pages a,nav.pages span{padding:2px 7px;border-radius:5px;text-decoration:none;color:var(--ink)}
nav.pages a:hover{background:var(--line)}nav.pages .cur{background:var(--ink);color:#fff}
main{padding:16px 20px;display:grid;grid-template-columns:repeat(auto-fill,minmax(560px,1fr));gap:16px}
.card{background:var(--card);border:1px solid var(--line);border-left:5px solid var(--ok);border-radius:8px;padding:12px;display:flex;gap:14px;min-width:0}
.card.failed{border-left-color:var(--bad)}.card[hidden]{display:none}
.input{flex:0 0 200px;min-width:0}.input img{width:200px;height:200px;object-fit:contain;background:var(--bg);border-radius:4px;display:block}
.noimg{width:200px;height:80px;display:flex;align-items:center;justify-content:center;background:var(--bg);color:var(--mute);border-radius:4px;font-size:12px;text-align:center;padding:4px}
.src{color:var(--mute);font-size:12px;word-break:break-all;margin-top:4px}
.body{flex:1;min-width:0}.body h2{font-size:13px;margin:0 0 6px;font-family:ui-monospace,"DejaVu Sans Mono",monospace;word-break:break-all}
.body h3{font-size:11px;text-transform:uppercase;letter-spacing:.05em;color:var(--mute);margin:8px 0 2px}
.error{background:var(--badbg);color:var(--bad);border:1px solid #fecaca;border-radius:6px;padding:6px 8px;white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,"DejaVu Sans Mono",monospace;font-size:12px;margin:0 0 6px}
dl{margin:0;display:grid;grid-template-columns:max-content 1fr;gap:2px 10px}dt{color:var(--mute);font-weight:600}dd{margin:0;word-break:break-word}
pre.ocr{margin:0;white-space:pre-wrap;word-break:break-word;font-family:inherit}
.prompt{margin:0;font-style:italic}.outputs{display:flex;flex-wrap:wrap;gap:6px}.outputs img{width:128px;height:128px;object-fit:cover;border-radius:4px;display:block}
details{margin-top:8px;color:var(--mute);font-size:12px}.empty{color:var(--mute);font-style:italic}
footer{padding:8px 20px 24px}
"""

_JS = """
(function(){
  var cards=[].slice.call(document.querySelectorAll('article.card'));
  var n={all:cards.length,failed:0,ok:0};
  cards.forEach(function(c){n[c.dataset.status]+=1;});
  [].forEach.call(document.querySelectorAll('[data-count]'),function(s){s.textContent='('+n[s.dataset.count]+')';});
  var buttons=[].slice.call(document.querySelectorAll('.filters button'));
  function show(f){
    if(!(f in n))f='all';
    cards.forEach(function(c){c.hidden=!(f==='all'||c.dataset.status===f);});
    buttons.forEach(function(b){b.setAttribute('aria-pressed',String(b.dataset.filter===f));});
    document.body.dataset.filter=f;
  }
  buttons.forEach(function(b){b.addEventListener('click',function(){
    history.replaceState(null,'',b.dataset.filter==='all'?location.pathname:'#'+b.dataset.filter);show(b.dataset.filter);});});
  window.addEventListener('hashchange',function(){show(location.hash.slice(1));});
  show(location.hash.slice(1));
})();
"""

e = html.escape  # quote=True: safe in text and in attribute values


def _img(src: str | None, uri: str, alt: str = "") -> str:
    src = _safe_src(src)
    if src is None:
        return f'<div class="noimg" title="{e(uri)}">{e(uri) or "no image"}</div>'
    return (f'<a href="{e(src)}" target="_blank" rel="noopener">'
            f'<img src="{e(src)}" alt="{e(alt)}" loading="lazy"></a>')


def _dl(pairs: dict) -> str:
    rows = "".join(f"<dt>{e(str(k))}</dt><dd>{e(_text(v)) if v not in (None, '') else '<span class=empty>—</span>'}</dd>"
                   for k, v in pairs.items())
    return f"<dl>{rows}</dl>"


def render_card(record: dict, resolve: Resolver) -> str:
    """One item as an ``<article class="card">`` (every value escaped)."""
    failed = is_failed(record)
    rid = str(record.get("id") or record.get("source") or "")
    source = _text(record.get("source"))
    thumb_uri = str(record.get("image") or record.get("source") or "")
    status = "failed" if failed else "ok"
    parts = [f'<article class="card {status}" data-status="{status}" id="item-{e(rid)}">',
             '<div class="input">', _img(resolve(thumb_uri) if thumb_uri else None, thumb_uri,
                                         alt="input"),
             f'<div class="src">{e(source)}</div>']
    if record.get("coco_id") is not None:
        parts.append(f'<div class="src">COCO id {e(str(record["coco_id"]))}</div>')
    parts.append('</div><div class="body">')
    parts.append(f"<h2>{e(rid)}</h2>")
    if failed:
        parts.append(f'<pre class="error">{e(_text(record.get("error")) or "failed")}</pre>')
    ocr = _ocr_text(record)
    if record.get("ocr") is not None:
        parts.append('<h3>OCR</h3>' + (f'<pre class="ocr">{e(ocr)}</pre>' if ocr.strip()
                                        else '<p class="empty">no text found</p>'))
    if record.get("captions"):
        parts.append("<h3>Captions</h3>" + _dl(record["captions"]))
    if record.get("vqa"):
        parts.append("<h3>VQA</h3>" + _dl(record["vqa"]))
    if record.get("prompt"):
        parts.append(f'<h3>Prompt</h3><p class="prompt">{e(_text(record["prompt"]))}</p>')
    outputs = [str(o) for o in record.get("outputs") or []]
    if outputs:
        parts.append('<h3>Generated</h3><div class="outputs">'
                     + "".join(_img(resolve(o), o, alt=f"output {k}") for k, o in enumerate(outputs))
                     + "</div>")
    extra = {k: record[k] for k in ("models", "timings_ms") if record.get(k)}
    if extra:
        parts.append("<details><summary>models and timings</summary>"
                     + _dl({f"{k} {kk}": vv for k, v in extra.items() for kk, vv in v.items()})
                     + "</details>")
    parts.append("</div></article>")
    return "".join(parts)


def _page_name(n: int) -> str:
    return "index.html" if n == 1 else f"page-{n}.html"


def _nav(cur: int, pages: int) -> str:
    if pages <= 1:
        return ""
    show = sorted({1, pages, *range(max(1, cur - 2), min(pages, cur + 2) + 1)})
    out, prev = [], 0
    if cur > 1:
        out.append(f'<a href="{_page_name(cur - 1)}" rel="prev">«</a>')
    for p in show:
        if p - prev > 1:
            out.append("<span>…</span>")
        out.append(f'<span class="cur">{p}</span>' if p == cur
                   else f'<a href="{_page_name(p)}">{p}</a>')
        prev = p
    if cur < pages:
        out.append(f'<a href="{_page_name(cur + 1)}" rel="next">»</a>')
    return f'<nav class="pages" aria-label="pages">{"".join(out)}</nav>'


def _page(title: str, summary: str, nav: str, cards: Iterable[str], filters: bool = True) -> str:
    buttons = ""
    if filters:
        buttons = ('<div class="filters" role="group" aria-label="filter">'
                   + "".join(f'<button type="button" data-filter="{f}">{label} '
                             f'<span data-count="{f}"></span></button>'
                             for f, label in (("all", "All"), ("failed", "Failed"),
                                              ("ok", "Succeeded")))
                   + "</div>")
    return ("<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
            f"<title>{e(title)}</title><style>{_CSS}</style></head><body>"
            f"<header><h1>{e(title)}</h1><span class=\"summary\">{summary}</span>{buttons}{nav}</header>"
            f"<main id=\"cards\">{''.join(cards)}</main><footer>{nav}</footer>"
            f"<script>{_JS}</script></body></html>\n")


def write_report(records: Iterable[dict], out_dir: str | Path, *,
                 resolve_image: Resolver | None = None, page_size: int = 100,
                 title: str = "itx report", contact_sheet: str | None = None) -> Path:
    """Write the HTML gallery into ``out_dir``; returns the path of ``index.html``.

    ``contact_sheet``: a path relative to ``out_dir`` to link from every page
    (write it with :func:`contact_sheet`).
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolve = resolve_image or default_resolver(out)

    # 1. stream cards into one part file per page; count as we go
    total = failed = pages = 0
    failed_cards: list[str] = []
    with tempfile.TemporaryDirectory(prefix=".itx-report-", dir=out) as tmp:
        part = None
        try:
            for rec in records:
                if total % page_size == 0:
                    if part:
                        part.close()
                    pages += 1
                    part = open(Path(tmp) / f"{pages}.part", "w", encoding="utf-8")  # noqa: SIM115
                card = render_card(rec, resolve)
                part.write(card)
                total += 1
                if is_failed(rec):
                    failed += 1
                    if len(failed_cards) < MAX_FAILED_LISTED:
                        failed_cards.append(card)
        finally:
            if part:
                part.close()
        pages = max(pages, 1)

        # 2. wrap each part in its page, now that the totals are known
        links = ""
        if failed:
            links += ' · <a href="failed.html">all failures</a>'
        if contact_sheet:
            links += f' · <a href="{e(quote(contact_sheet))}">contact sheet</a>'
        for n in range(1, pages + 1):
            first = (n - 1) * page_size + 1
            shown = (f" · items {first}–{min(n * page_size, total)}, page {n} of {pages}"
                     if pages > 1 else "")
            summary = (f"{total} items · {total - failed} succeeded · "
                       f'<b class="{"bad" if failed else ""}">{failed} failed</b>{shown}{links}')
            p = Path(tmp) / f"{n}.part"
            cards = [p.read_text(encoding="utf-8")] if p.exists() else []
            _write_atomic(out / _page_name(n), _page(title, summary, _nav(n, pages), cards))

    # 3. the failures of the whole batch on one page; no stale pages from a bigger run
    failed_page = out / "failed.html"
    if failed:
        more = (f" (the first {MAX_FAILED_LISTED})" if failed > MAX_FAILED_LISTED else "")
        _write_atomic(failed_page, _page(
            f"{title}: failures", f'{failed} failed of {total}{more} · <a href="index.html">all items</a>',
            "", failed_cards, filters=False))
    elif failed_page.exists():
        failed_page.unlink()
    for old in out.glob("page-*.html"):
        m = re.fullmatch(r"page-(\d+)\.html", old.name)
        if m and int(m.group(1)) > pages:
            old.unlink()
    return out / "index.html"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ----------------------------------------------------------------------------
# contact sheet
# ----------------------------------------------------------------------------
def default_loader(uri: str):
    """Open an image from a ``file://`` URI, a local path or an ``s3://`` URI (boto3)."""
    from PIL import Image

    from workers.images import FORMATS

    u = urlparse(uri)
    if u.scheme == "s3":
        import io

        from workers.storage import S3Store

        data = S3Store(f"s3://{u.netloc}").get(uri)
        return Image.open(io.BytesIO(data), formats=FORMATS)
    path = _local_path(uri)
    if path is None:
        raise ValueError(f"cannot load {uri!r}: only file://, local paths and s3:// are read")
    return Image.open(path, formats=FORMATS)


def _font(size: int):
    from PIL import ImageFont

    for name in ("DejaVuSans.ttf", "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"):
        try:
            return ImageFont.truetype(name, size)
        except OSError:
            continue
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1
        return ImageFont.load_default()


def _wrap(draw, text: str, font, width: int, max_lines: int) -> list[str]:
    words = " ".join(text.split()).split(" ")
    lines: list[str] = []
    line = ""
    for w in words:
        cand = f"{line} {w}".strip()
        if draw.textlength(cand, font=font) <= width or not line:
            line = cand
        else:
            lines.append(line)
            line = w
    if line:
        lines.append(line)
    # a single word wider than the row: cut it
    lines = [_fit(draw, ln, font, width) for ln in lines]
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = _fit(draw, lines[-1] + "…", font, width, force_ellipsis=True)
    return lines


def _fit(draw, s: str, font, width: int, force_ellipsis: bool = False) -> str:
    if draw.textlength(s, font=font) <= width and not (force_ellipsis and not s.endswith("…")):
        return s
    s = s.rstrip("…")
    while s and draw.textlength(s + "…", font=font) > width:
        s = s[:-1]
    return s + "…"


def _tile(im, cell: int):
    from PIL import Image, ImageOps

    im.draft("RGB", (cell, cell))  # JPEG: decode at reduced size, fast for big photos
    im = ImageOps.exif_transpose(im)
    if im.mode in ("RGBA", "LA", "P"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    im = im.convert("RGB")
    if max(im.size) < cell // 2:  # small outputs (e.g. 64x64) fill the cell, pixels kept sharp
        k = (cell // 2) / max(im.size)
        im = im.resize((max(1, round(im.width * k)), max(1, round(im.height * k))),
                       Image.NEAREST)
    im.thumbnail((cell, cell))
    return im


def contact_sheet(records: Iterable[dict], out_path: str | Path, *, cell: int = 192,
                  band: int = 48, max_items: int = 64,
                  load_image: Callable[[str], Any] | None = None) -> tuple[Path, tuple[int, int]]:
    """A PNG grid: one row per item (input, then its outputs), the prompt under the row.

    The image is ``cols * cell`` wide and ``rows * (cell + band)`` high, where ``rows`` is
    the number of items (at most ``max_items``) and ``cols`` is 1 + the most outputs any
    of them has. A failed item shows its error in red instead of the prompt; an image
    that cannot be loaded is a grey tile saying so. Returns ``(path, (cols, rows))``.
    """
    from PIL import Image, ImageDraw

    load = load_image or default_loader
    items = list(itertools.islice(records, max_items))
    if not items:
        raise ValueError("no records: nothing to put on a contact sheet")
    cols = 1 + max(len(r.get("outputs") or []) for r in items)
    rows = len(items)
    sheet = Image.new("RGB", (cols * cell, rows * (cell + band)), (245, 245, 244))
    draw = ImageDraw.Draw(sheet)
    size = max(9, min(16, (band - 6) // 2))
    font, small = _font(size), _font(max(9, min(12, cell // 14)))
    line_h = size + 3
    max_lines = max(1, (band - 4) // line_h)

    for r, rec in enumerate(items):
        y = r * (cell + band)
        uris = [str(rec.get("image") or rec.get("source") or "")]
        uris += [str(o) for o in rec.get("outputs") or []]
        for c, uri in enumerate(uris):
            x = c * cell
            draw.rectangle([x + 1, y + 1, x + cell - 2, y + cell - 2], fill=(231, 229, 228))
            try:
                if not uri:
                    raise ValueError("no image")
                with load(uri) as im:
                    tile = _tile(im, cell - 4)
                sheet.paste(tile, (x + (cell - tile.width) // 2, y + (cell - tile.height) // 2))
            except Exception as exc:  # noqa: BLE001 - a missing image is a grey tile, not a crash
                msg = _wrap(draw, f"cannot load: {type(exc).__name__}", small, cell - 12, 3)
                draw.multiline_text((x + 6, y + 6), "\n".join(msg), fill=(120, 113, 108), font=small)
        # the band under the row: the prompt, or the error in red
        draw.line([0, y + cell + band - 1, cols * cell, y + cell + band - 1], fill=(214, 211, 209))
        failed = is_failed(rec)
        text = _text(rec.get("error")) if failed else _text(rec.get("prompt"))
        if failed:
            text = "ERROR: " + (text or "failed")
        elif not text:
            text = next(iter((rec.get("captions") or {}).values()), "") or ""
        lines = _wrap(draw, text, font, cols * cell - 12, max_lines) if text else []
        draw.multiline_text((6, y + cell + 2), "\n".join(lines), font=font, spacing=3,
                            fill=(185, 28, 28) if failed else (28, 25, 23))

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out, (cols, rows)
