"""A COCO split processed, evaluated and looked at with the three documented commands."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from tests.test_coco import CAPTIONS, coco  # noqa: F401  (the fixture)

ITX = str(Path(sys.executable).parent / "itx")
REPO = Path(__file__).resolve().parents[1]


def itx(*args, timeout=600):
    return subprocess.run([ITX, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO)


def test_run_eval_report(coco, tmp_path):  # noqa: F811
    ann, images = coco
    out = tmp_path / "coco-val"
    r = itx("run", "--coco", str(ann), "--images", str(images), "--out", str(out),
            "--profile", "tiny-random", "--captioners", "blip,git", "--limit", "3")
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
    assert [x["coco_id"] for x in recs] == [42, 7, 1001]  # annotation order, --limit 3
    assert recs[2]["file_name"] == "sub/000000001001.jpg"
    assert all(x["error"] is None and set(x["captions"]) == {"blip", "git"} for x in recs)

    r = itx("run", "--coco", str(ann), "--images", str(images), "--out", str(tmp_path / "ids"),
            "--profile", "tiny-random", "--generator", "none", "--ids", "1001,5")
    assert r.returncode == 0, r.stderr[-2000:]
    ids = [json.loads(x)["coco_id"] for x in (tmp_path / "ids/manifest.jsonl").read_text().splitlines()]
    assert ids == [1001, 5]

    # a manifest whose blip captions are the references themselves scores Bleu_4 = 1 for blip
    perfect = tmp_path / "perfect.jsonl"
    with perfect.open("w") as f:
        for x in recs:
            x["captions"]["blip"] = CAPTIONS[x["coco_id"]][0]
            f.write(json.dumps(x) + "\n")
    metrics = tmp_path / "metrics.json"
    r = itx("eval", str(perfect), "--coco", str(ann), "--json", str(metrics))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    m = json.loads(metrics.read_text())
    assert abs(m["blip"]["Bleu_4"] - 1.0) < 1e-6
    for k in ("Bleu_1", "Bleu_4", "ROUGE_L", "CIDEr"):
        assert m["blip"][k] > m["git"][k], k
    assert "Bleu_4" in r.stdout and "blip" in r.stdout

    rep = tmp_path / "report"
    r = itx("report", str(out / "manifest.jsonl"), "--out", str(rep))
    assert r.returncode == 0, r.stdout + r.stderr[-3000:]
    html = (rep / "index.html").read_text()
    assert html.count('<article class="card ') == 3
    for x in recs:
        assert f'id="item-{x["id"]}"' in html
    sheet = Image.open(rep / "contact-sheet.png")
    assert sheet.width > 0 and sheet.height > 0


def test_eval_usage_errors(tmp_path):
    r = itx("eval", str(tmp_path / "nope.jsonl"), "--coco", str(tmp_path / "a.json"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    r = itx("report", "no-such-batch", "--out", str(tmp_path / "r"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
