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

Pages are rendered from Jinja2 templates (``orchestrator/templates``) with autoescape:
every string from a record (captions, OCR text, prompts, errors, even ids) is HTML-escaped;
URLs with a scheme other than http(s)/file are dropped. Records with ``scores`` show them
on their card, and every page can sort and filter its cards by any score.

``contact_sheet(records, path)`` is the quick look: one row per item, its input
beside its outputs, the prompt (or the error) printed under the row; ``sort_by`` orders
it by a score. ``score_plot(records, path)`` draws the score distributions (matplotlib).
"""
from __future__ import annotations

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
# HTML (Jinja2 templates in orchestrator/templates, autoescaped)
# ----------------------------------------------------------------------------
_ENV = None


def _env():
    global _ENV
    if _ENV is None:
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        _ENV = Environment(loader=FileSystemLoader(Path(__file__).parent / "templates"),
                           autoescape=True, undefined=StrictUndefined, trim_blocks=False)
    return _ENV


def _fmt(v: Any) -> str:
    return f"{v:.4f}" if isinstance(v, float) else _text(v)


def render_card(record: dict, resolve: Resolver) -> str:
    """One item as an ``<article class="card">`` (every value escaped); its scores travel
    in ``data-scores`` for the page's sort and filter."""
    failed = is_failed(record)
    thumb_uri = str(record.get("image") or record.get("source") or "")
    scores = {k: v for k, v in (record.get("scores") or {}).items()
              if isinstance(v, (int, float)) and not isinstance(v, bool)}
    extra = {k: record[k] for k in ("models", "timings_ms") if record.get(k)}
    return _env().get_template("card.html.j2").render(
        status="failed" if failed else "ok", failed=failed,
        rid=str(record.get("id") or record.get("source") or ""),
        source=_text(record.get("source")), coco_id=record.get("coco_id"),
        thumb_uri=thumb_uri, thumb_src=_safe_src(resolve(thumb_uri)) if thumb_uri else None,
        error=_text(record.get("error")), has_ocr=record.get("ocr") is not None,
        ocr=_ocr_text(record),
        captions=[(str(k), _text(v)) for k, v in (record.get("captions") or {}).items()],
        vqa=[(str(k), _text(v)) for k, v in (record.get("vqa") or {}).items()],
        prompt=_text(record.get("prompt")), prompt_caption=record.get("prompt_caption"),
        outputs=[{"uri": str(o), "src": _safe_src(resolve(str(o)))}
                 for o in record.get("outputs") or []],
        scores=[(k, _fmt(float(v))) for k, v in scores.items()],
        scores_json=json.dumps(scores, sort_keys=True) if scores else "",
        flags=[(str(k), bool(v)) for k, v in (record.get("flags") or {}).items()],
        details=[(f"{k} {kk}", _text(vv)) for k, v in extra.items() for kk, vv in v.items()])


def _page_name(n: int) -> str:
    return "index.html" if n == 1 else f"page-{n}.html"


def _nav(cur: int, pages: int) -> str:
    from markupsafe import Markup

    if pages <= 1:
        return Markup("")
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
    return Markup(f'<nav class="pages" aria-label="pages">{"".join(out)}</nav>')  # page numbers only


def _page(title: str, summary, nav, cards: Iterable[str], filters: bool = True, *,
          score_keys: list[str] = (), sort_key: str | None = None, sort_asc: bool = False,
          plot: str | None = None) -> str:
    from markupsafe import Markup

    return _env().get_template("page.html.j2").render(
        title=title, summary=summary, nav=nav, cards=[Markup(c) for c in cards], filters=filters,
        score_keys=list(score_keys), sort_key=sort_key, sort_asc=sort_asc, plot=plot) + "\n"


def _summary(total: int, failed: int, shown: str, links: list[tuple[str, str]]):
    from markupsafe import Markup, escape

    parts = [escape(f"{total} items · {total - failed} succeeded · "),
             Markup('<b class="{}">{} failed</b>').format("bad" if failed else "", failed),
             escape(shown)]
    parts += [Markup(' · <a href="{}">{}</a>').format(quote(href), label) for href, label in links]
    return Markup("").join(parts)


def write_report(records: Iterable[dict], out_dir: str | Path, *,
                 resolve_image: Resolver | None = None, page_size: int = 100,
                 title: str = "itx report", contact_sheet: str | None = None,
                 plot: str | None = None, sort_by: str | None = None,
                 ascending: bool = False) -> Path:
    """Write the HTML gallery into ``out_dir``; returns the path of ``index.html``.

    ``contact_sheet`` and ``plot``: paths relative to ``out_dir`` (see :func:`contact_sheet`
    and :func:`score_plot`) to link from every page. Every page can sort and filter its cards
    by any score in the records; ``sort_by`` (``ascending``) is the initial order.
    """
    if page_size < 1:
        raise ValueError(f"page_size must be >= 1, got {page_size}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    resolve = resolve_image or default_resolver(out)

    # 1. stream cards into one part file per page; count as we go
    total = failed = pages = 0
    failed_cards: list[str] = []
    keys: dict[str, None] = {}
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
                part.write(card + "\x00")
                keys.update(dict.fromkeys(rec.get("scores") or {}))
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
        links = [("failed.html", "all failures")] if failed else []
        if contact_sheet:
            links.append((contact_sheet, "contact sheet"))
        if plot:
            links.append((plot, "score distributions"))
        for n in range(1, pages + 1):
            first = (n - 1) * page_size + 1
            shown = (f" · items {first}–{min(n * page_size, total)}, page {n} of {pages}"
                     if pages > 1 else "")
            p = Path(tmp) / f"{n}.part"
            cards = [c for c in p.read_text(encoding="utf-8").split("\x00") if c] \
                if p.exists() else []
            _write_atomic(out / _page_name(n), _page(
                title, _summary(total, failed, shown, links), _nav(n, pages), cards,
                score_keys=list(keys), sort_key=sort_by, sort_asc=ascending,
                plot=quote(plot) if plot and n == 1 else None))

    # 3. the failures of the whole batch on one page; no stale pages from a bigger run
    failed_page = out / "failed.html"
    if failed:
        from markupsafe import Markup

        more = (f" (the first {MAX_FAILED_LISTED})" if failed > MAX_FAILED_LISTED else "")
        _write_atomic(failed_page, _page(
            f"{title}: failures",
            Markup('{} · <a href="index.html">all items</a>').format(
                f"{failed} failed of {total}{more}"),
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


def by_score(records: Iterable[dict], key: str, ascending: bool = False) -> list[dict]:
    """Records ordered by score ``key`` (highest first unless ``ascending``); records without
    it keep their order, after the others."""
    recs = list(records)
    has = [r for r in recs if isinstance((r.get("scores") or {}).get(key), (int, float))]
    rest = [r for r in recs if not isinstance((r.get("scores") or {}).get(key), (int, float))]
    has.sort(key=lambda r: r["scores"][key], reverse=not ascending)  # stable: ties keep order
    return has + rest


def score_plot(records: Iterable[dict], out_path: str | Path, *, bins: int = 20) -> Path | None:
    """A PNG of every score family's distribution (one histogram each: ``clip:caption:<c>``,
    ``clip:prompt``, ``clip:output``, ``clip-i:output``, ``ocr-readback:output``, with mean
    and median marked); None when the records have no scores."""
    fams: dict[str, list[float]] = {}
    for r in records:
        for k, v in (r.get("scores") or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                fams.setdefault(_family(k), []).append(float(v))
    if not fams:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(3, len(fams))
    rows = -(-len(fams) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    for ax, (name, vals) in zip(axes.flat, fams.items()):
        ax.hist(vals, bins=bins, color="#57534e")
        mean, median = sum(vals) / len(vals), sorted(vals)[len(vals) // 2]
        ax.axvline(mean, color="#b91c1c", lw=1.5, label=f"mean {mean:.3f}")
        ax.axvline(median, color="#15803d", lw=1.5, ls="--", label=f"median {median:.3f}")
        ax.set_title(f"{name} (n={len(vals)})", fontsize=10)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(fams):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, out)
    return out


def _family(key: str) -> str:
    from workers.stages.score import family

    return family(key)


def contact_sheet(records: Iterable[dict], out_path: str | Path, *, cell: int = 192,
                  band: int = 48, max_items: int = 64,
                  load_image: Callable[[str], Any] | None = None, sort_by: str | None = None,
                  ascending: bool = False) -> tuple[Path, tuple[int, int]]:
    """A PNG grid: one row per item (input, then its outputs), the prompt under the row.
    ``sort_by`` a score key: the rows are the items in that score's order (highest first
    unless ``ascending``), each band starting with the score.

    The image is ``cols * cell`` wide and ``rows * (cell + band)`` high, where ``rows`` is
    the number of items (at most ``max_items``) and ``cols`` is 1 + the most outputs any
    of them has. A failed item shows its error in red instead of the prompt; an image
    that cannot be loaded is a grey tile saying so. Returns ``(path, (cols, rows))``.
    """
    from PIL import Image, ImageDraw

    load = load_image or default_loader
    if sort_by:
        records = by_score(records, sort_by, ascending)
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
        val = (rec.get("scores") or {}).get(sort_by) if sort_by else None
        if sort_by:
            text = (f"{sort_by} {val:.4f} · " if isinstance(val, (int, float))
                    else f"{sort_by} — · ") + text
        lines = _wrap(draw, text, font, cols * cell - 12, max_lines) if text else []
        draw.multiline_text((6, y + cell + 2), "\n".join(lines), font=font, spacing=3,
                            fill=(185, 28, 28) if failed else (28, 25, 23))

    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    sheet.save(tmp, format="PNG")
    os.replace(tmp, out)
    return out, (cols, rows)
