"""The batch report: HTML gallery (checked in headless Chromium) and contact sheet."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import unquote

import pytest
from PIL import Image, ImageStat

from orchestrator.report import contact_sheet, default_resolver, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")

EVIL_CAPTION = "<b>bold</b> & 'quoted' \"cat\""
EVIL_PROMPT = "a cat <img src=x onerror=alert(1)>, watercolor"
EVIL_ERROR = "CUDA out of memory </pre><script>alert('x')</script>"


@pytest.fixture()
def batch(tmp_path, photos):
    """Five records in a file:// store layout, with real PNGs; r3 failed."""
    store = tmp_path / "store"
    (store / "inputs").mkdir(parents=True)
    (store / "runs" / "b1" / "images").mkdir(parents=True)
    records = []
    for k in range(5):
        rid = f"r{k + 1}"
        inp = store / "inputs" / f"{rid}.png"
        photos[k % len(photos)].convert("RGB").resize((96, 64)).save(inp)
        outputs = []
        if rid != "r3":
            for j in range((0, 1, 0, 2, 1)[k]):  # 0, 1 or 2 generated images
                o = store / "runs" / "b1" / "images" / f"{rid}-{j}.png"
                Image.new("RGB", (64, 64), (40 * k, 200 - 30 * j, 90)).save(o)
                outputs.append(o.as_uri())
        rec = {
            "id": rid, "source": f"photos/{rid}.jpg", "image": inp.as_uri(), "coco_id": 100 + k,
            "ocr": {"text": f"OPEN 24 HOURS {k}", "lines": []},
            "captions": {"blip": f"{EVIL_CAPTION} {k}", "git": f"a photo number {k}"},
            "vqa": {"what is in the image?": f"thing {k}"},
            "prompt": f"{EVIL_PROMPT} {k}", "outputs": outputs,
            "models": {"caption:blip": "tiny-random/blip"}, "timings_ms": {"caption:blip": 12},
            "error": None,
        }
        if rid == "r3":
            rec.update(captions={}, vqa={}, prompt=None, ocr=None, error=EVIL_ERROR)
        records.append(rec)
    return records


def cards_of(html: str) -> list[str]:
    return re.findall(r'<article class="card (\w+)"', html)


def test_html_has_one_card_per_item_and_escapes_everything(tmp_path, batch):
    out = tmp_path / "report"
    index = write_report(batch, out, contact_sheet="contact-sheet.png")
    html = index.read_text()

    assert cards_of(html) == ["ok", "ok", "failed", "ok", "ok"]
    for k in range(5):
        if k != 2:
            assert f"&lt;b&gt;bold&lt;/b&gt; &amp; &#39;quoted&#39; &#34;cat&#34; {k}" in html
            assert f"a cat &lt;img src=x onerror=alert(1)&gt;, watercolor {k}" in html
            assert f"OPEN 24 HOURS {k}" in html and f"thing {k}" in html
    assert "CUDA out of memory &lt;/pre&gt;&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;" in html
    # nothing untrusted reached the markup unescaped
    assert "<b>bold" not in html and "onerror=alert(1)>" not in html
    assert html.count("<script>") == 1  # ours only
    assert 'href="contact-sheet.png"' in html
    assert "<link" not in html and "https://" not in html  # self-contained: no CDN

    # every image is a relative path that resolves to the stored file
    srcs = re.findall(r'<img src="([^"]+)"', html)
    assert len(srcs) == 5 + sum(len(r["outputs"]) for r in batch)
    for src in srcs:
        assert not src.startswith(("/", "file:"))
        assert (out / unquote(src)).resolve().is_file(), src

    failed = (out / "failed.html").read_text()
    assert cards_of(failed) == ["failed"]


def test_pagination_and_stale_pages(tmp_path, batch):
    out = tmp_path / "report"
    write_report(iter(batch), out, page_size=2)  # any iterable, streamed
    pages = sorted(p.name for p in out.glob("*.html") if p.name != "failed.html")
    assert pages == ["index.html", "page-2.html", "page-3.html"]
    counts = [len(cards_of((out / p).read_text())) for p in ("index.html", "page-2.html",
                                                             "page-3.html")]
    assert counts == [2, 2, 1]
    p2 = (out / "page-2.html").read_text()
    assert 'href="index.html" rel="prev"' in p2 and 'href="page-3.html" rel="next"' in p2
    assert "5 items" in p2 and "page 2 of 3" in p2
    assert not list(out.glob(".itx-report-*"))  # temporary parts cleaned up

    # a smaller re-run leaves no stale pages or failure list behind
    ok_only = [r for r in batch if not r["error"]]
    write_report(ok_only, out, page_size=10)
    assert sorted(p.name for p in out.glob("*.html")) == ["index.html"]
    empty = write_report([], tmp_path / "empty").read_text()
    assert cards_of(empty) == [] and "0 items" in empty


def test_resolvers(tmp_path, batch):
    out = tmp_path / "report"
    resolve = default_resolver(out)
    assert resolve(batch[0]["image"]) == "../store/inputs/r1.png"
    assert resolve("https://example.com/a.png") == "https://example.com/a.png"
    assert resolve("s3://bucket/inputs/a.png") is None

    # a presigning resolver (what the CLI passes for s3:// stores) is used verbatim, escaped
    recs = [dict(batch[0], image="s3://bkt/inputs/r1.png", outputs=["s3://bkt/o.png",
                                                                     "javascript:alert(1)"])]
    html = write_report(recs, out, resolve_image=lambda u: (
        u if u.startswith("javascript:") else
        "https://minio.local/bkt/" + u.rsplit("/", 1)[1] + "?X-Amz-Signature=a&b=1")).read_text()
    assert 'src="https://minio.local/bkt/r1.png?X-Amz-Signature=a&amp;b=1"' in html
    assert 'href="javascript' not in html and 'src="javascript' not in html

    # without a resolver an s3 image shows as its URI, not a broken <img>
    html = write_report(recs, out).read_text()
    assert '<div class="noimg" title="s3://bkt/inputs/r1.png">' in html


def _chromium(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp / 'chromium-profile'}",
         "--virtual-time-budget=5000", *args],
        capture_output=True, text=True, timeout=120, check=False)


@needs_chromium
def test_chromium_renders_cards_filters_and_screenshot(tmp_path, batch):
    out = tmp_path / "report"
    index = write_report(batch, out)

    # the DOM after the page's JS ran: 5 cards, counts filled in by the script
    dom = _chromium("--dump-dom", index.as_uri(), tmp=tmp_path).stdout
    assert len(cards_of(dom)) == 5
    assert 'data-count="all">(5)<' in dom and 'data-count="failed">(1)<' in dom
    assert 'data-count="ok">(4)<' in dom
    assert "&lt;b&gt;bold&lt;/b&gt;" in dom and "a photo number 4" in dom

    # #failed in the address shows the failed card only
    dom = _chromium("--dump-dom", index.as_uri() + "#failed", tmp=tmp_path).stdout
    visible = re.findall(r'<article class="card (\w+)"[^>]*?(hidden="")?>', dom)
    assert [c for c, hidden in visible if not hidden] == ["failed"]
    assert 'data-filter="failed"' in dom

    shot = tmp_path / "shot.png"
    r = _chromium(f"--screenshot={shot}", "--window-size=1280,2000", index.as_uri(), tmp=tmp_path)
    assert shot.is_file(), r.stderr[-2000:]
    im = Image.open(shot).convert("RGB")
    assert im.size == (1280, 2000)
    stat = ImageStat.Stat(im)
    assert max(stat.stddev) > 20, "screenshot looks blank"
    assert len(im.getcolors(maxcolors=1 << 20) or []) > 200  # photos and text, not a flat page


def test_contact_sheet_grid(tmp_path, batch):
    path, (cols, rows) = contact_sheet(batch, tmp_path / "sheet.png", cell=64, band=24)
    assert (cols, rows) == (3, 5)  # input + at most 2 outputs; one row per item
    im = Image.open(path)
    assert im.size == (3 * 64, 5 * (64 + 24))
    rgb = im.convert("RGB")
    # the input photo is pasted in the first cell of row 1; row 1 (r1) has no outputs
    colors = rgb.crop((8, 8, 56, 56)).getcolors(4096)
    assert colors is None or len(colors) > 20  # a photo, not a flat tile
    assert rgb.crop((64 + 8, 8, 128 - 8, 56)).getcolors() == [(48 * 48, (245, 245, 244))]
    # the failed row (r3) prints its error in red in its band
    band = rgb.crop((0, 2 * 88 + 64, 192, 3 * 88))
    assert any(r > 150 and g < 80 and b < 80 for _, (r, g, b) in band.getcolors(4096))

    path, (cols, rows) = contact_sheet(batch, tmp_path / "two.png", max_items=2)
    assert (cols, rows) == (2, 2)
    assert Image.open(path).size == (2 * 192, 2 * (192 + 48))


def test_contact_sheet_missing_images_and_empty(tmp_path, batch):
    broken = [dict(batch[1], image=(tmp_path / "gone.png").as_uri(), outputs=["s3://x/y.png"])]
    path, grid = contact_sheet(broken, tmp_path / "s.png", cell=64, band=24,
                               load_image=lambda uri: Image.open(unquote(uri[len("file://"):])))
    assert grid == (2, 1) and Image.open(path).size == (128, 88)
    with pytest.raises(ValueError, match="no records"):
        contact_sheet([], tmp_path / "e.png")


# --- scores: on every card, sort and filter, distributions, sheet order --------------------------
SCORED = {"r1": 0.31, "r2": 0.92, "r4": 0.55, "r5": 0.74}  # clip:prompt; r3 failed: none


@pytest.fixture()
def scored(batch):
    for r in batch:
        if r["id"] in SCORED:
            r["scores"] = {"clip:prompt": SCORED[r["id"]], "clip:caption:blip": 1.0 - SCORED[r["id"]]}
            r["scores"].update({f"clip-i:output:{k}": 0.5 + 0.1 * k for k in range(len(r["outputs"]))})
            r["flags"] = {f"nsfw:output:{k}": k == 1 for k in range(len(r["outputs"]))}
    batch[0]["prompt_caption"] = "blip"
    return batch


def test_scores_on_cards_and_controls(tmp_path, scored):
    import html as htmllib
    import json

    from orchestrator.report import score_plot

    out = tmp_path / "report"
    plot = score_plot(scored, out / "scores.png")
    index = write_report(scored, out, plot=plot.name, sort_by="clip:prompt")
    page = index.read_text()
    assert page.count("<h3>Scores</h3>") == 4 and "<dt>clip:prompt</dt><dd>0.9200</dd>" in page
    assert '<dd class="flag">yes</dd>' in page and "from the best caption: blip" in page
    data = re.findall(r'id="item-(\w+)" data-scores="([^"]*)"', page)
    assert {rid: json.loads(htmllib.unescape(d))["clip:prompt"] for rid, d in data} == SCORED
    assert '<option value="clip:prompt" selected>' in page and 'value="clip-i:output:1"' in page
    assert 'src="scores.png"' in page and 'href="scores.png"' in page
    im = Image.open(plot)
    assert im.size[0] >= 800 and max(ImageStat.Stat(im.convert("L")).stddev) > 20
    # a report of unscored records has no score controls
    assert 'id="sort-key"' not in write_report([dict(r, scores={}) for r in scored],
                                          tmp_path / "plain").read_text()
    assert score_plot([{"scores": {}}], tmp_path / "none.png") is None


@needs_chromium
def test_chromium_sorts_and_filters_by_score(tmp_path, scored):
    out = tmp_path / "report"
    index = write_report(scored, out, sort_by="clip:prompt")

    def order(dom):
        return re.findall(r'<article class="card \w+" data-status="\w+" id="item-(\w+)"', dom)

    def visible(dom):
        return [rid for rid, hidden in re.findall(
            r'<article class="card \w+"[^>]*?id="item-(\w+)"[^>]*?(hidden="")?>', dom) if not hidden]

    dom = _chromium("--dump-dom", index.as_uri(), tmp=tmp_path).stdout
    assert order(dom) == ["r2", "r5", "r4", "r1", "r3"]  # highest first, unscored last
    dom = _chromium("--dump-dom", index.as_uri() + "?sort=clip:prompt&dir=asc", tmp=tmp_path).stdout
    assert order(dom) == ["r1", "r4", "r5", "r2", "r3"]
    dom = _chromium("--dump-dom", index.as_uri() + "?sort=&key=clip:prompt&min=0.5&max=0.8",
                    tmp=tmp_path).stdout
    assert order(dom) == ["r1", "r2", "r3", "r4", "r5"] and visible(dom) == ["r4", "r5"]
    assert '<span id="shown" class="summary">2 shown</span>' in dom


def test_contact_sheet_in_score_order(tmp_path, scored):
    from orchestrator.report import by_score

    assert [r["id"] for r in by_score(scored, "clip:prompt")] == ["r2", "r5", "r4", "r1", "r3"]
    assert [r["id"] for r in by_score(scored, "clip:prompt", True)] == ["r1", "r4", "r5", "r2", "r3"]
    a, grid = contact_sheet(scored, tmp_path / "a.png", cell=64, band=24, sort_by="clip:prompt")
    b, _ = contact_sheet(by_score(scored, "clip:prompt"), tmp_path / "b.png", cell=64, band=24)
    ia, ib = Image.open(a).convert("RGB"), Image.open(b).convert("RGB")
    for row in range(grid[1]):  # the same tiles in the same rows; the bands add the score
        box = (0, row * 88, ia.width, row * 88 + 64)
        assert ia.crop(box).tobytes() == ib.crop(box).tobytes()
    assert ia.tobytes() != ib.tobytes()
