"""COCODataset over a small COCO-format fixture written by the test."""
from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from orchestrator.coco import COCODataset, collate_pil, load_captions

# ids out of order on purpose: the dataset keeps the annotation file's order
IMAGES = [(42, "000000000042.jpg", "astronaut"), (7, "000000000007.jpg", "coffee"),
          (1001, "sub/000000001001.jpg", "camera"), (5, "000000000005.jpg", "chelsea")]
CAPTIONS = {42: ["An astronaut poses in front of a flag.", "A woman in an orange space suit."],
            7: ["A cup of coffee on a saucer."],
            1001: ["A man with a camera on a tripod.", "A black and white photo of a man.",
                   "A photographer in a field."],
            5: []}  # an image without references (like a test split)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    from skimage import data

    root = tmp_path_factory.mktemp("coco")
    images = root / "val2017"
    for _, name, fn in IMAGES:
        (images / name).parent.mkdir(parents=True, exist_ok=True)
        arr = getattr(data, fn)()
        Image.fromarray(arr).resize((arr.shape[1] // 4, arr.shape[0] // 4)).save(images / name)
    anns, k = [], 0
    for image_id, caps in CAPTIONS.items():
        for cap in caps:
            k += 1
            anns.append({"id": k, "image_id": image_id, "caption": f"  {cap}\n"})
    ann = {"info": {}, "licenses": [],
           "images": [{"id": i, "file_name": n, "width": 1, "height": 1} for i, n, _ in IMAGES],
           "annotations": anns}
    path = root / "annotations" / "captions_val2017.json"
    path.parent.mkdir()
    path.write_text(json.dumps(ann))
    return path, images


def test_len_getitem(coco, capsys):
    ann, images = coco
    ds = COCODataset(ann, images)
    assert capsys.readouterr().out == ""  # pycocotools' prints are silenced
    assert len(ds) == 4
    assert [ds[i]["image_id"] for i in range(4)] == [42, 7, 1001, 5]

    item = ds[2]
    assert set(item) == {"image", "image_id", "file_name", "captions", "error"}
    assert item["file_name"] == "sub/000000001001.jpg" and item["error"] is None
    assert item["captions"] == CAPTIONS[1001]  # stripped, in file order
    assert isinstance(item["image"], Image.Image)
    assert item["image"].mode == "RGB" and item["image"].size == (128, 128)  # camera is grayscale
    assert ds[-1]["image_id"] == 5 and ds[-1]["captions"] == []
    with pytest.raises(IndexError):
        ds[4]


def test_ids_limit_decode(coco):
    ann, images = coco
    ds = COCODataset(ann, images, ids=[5, 42, 7], limit=2)
    assert [ds[i]["image_id"] for i in range(len(ds))] == [5, 42]
    assert len(COCODataset(ann, images, limit=0)) == 0
    with pytest.raises(KeyError, match="999"):
        COCODataset(ann, images, ids=[42, 999])

    raw = COCODataset(ann, images, ids=[7], decode=False)[0]["image"]
    assert raw == (images / "000000000007.jpg").read_bytes()

    refs = COCODataset(ann, images, ids=["1001", 7]).references()  # ids from a CLI are strings
    assert refs == {1001: CAPTIONS[1001], 7: CAPTIONS[7]}


def test_iter_items_reads_no_images(coco, tmp_path):
    ann, _ = coco
    empty_root = tmp_path / "no-images-here"
    empty_root.mkdir()
    ds = COCODataset(ann, empty_root)
    items = list(ds.iter_items())
    assert [it["coco_id"] for it in items] == [42, 7, 1001, 5]
    assert items[2] == {"source": str(empty_root.resolve() / "sub/000000001001.jpg"),
                        "coco_id": 1001, "file_name": "sub/000000001001.jpg"}
    # reading them is where a missing file shows up: as the item's error, or raised if strict
    bad = ds[0]
    assert bad["image"] is None and "FileNotFoundError" in bad["error"]
    with pytest.raises(FileNotFoundError):
        COCODataset(ann, empty_root, strict=True)[0]


def test_bad_inputs(coco, tmp_path):
    ann, images = coco
    with pytest.raises(FileNotFoundError):
        COCODataset(tmp_path / "nope.json", images)
    with pytest.raises(FileNotFoundError, match="not a folder"):
        COCODataset(ann, tmp_path / "missing")
    not_json = tmp_path / "x.json"
    not_json.write_text("{oops")
    with pytest.raises(ValueError, match="not a COCO annotation file"):
        load_captions(not_json)
    # a file name that climbs out of the image root is refused, not read
    evil = tmp_path / "evil.json"
    evil.write_text(json.dumps({"images": [{"id": 1, "file_name": "../../etc/passwd"}],
                                "annotations": []}))
    item = COCODataset(evil, images)[0]
    assert item["image"] is None and "outside the image root" in item["error"]


def test_dataloader_two_workers(coco):
    import torch
    from torch.utils.data import DataLoader

    torch.set_num_threads(1)
    ann, images = coco
    ds = COCODataset(ann, images)
    assert len(pickle.dumps(ds)) < 10_000  # workers get ids and names, not the COCO index
    loader = DataLoader(ds, batch_size=3, num_workers=2, collate_fn=collate_pil)
    batches = list(loader)
    assert [len(b["image"]) for b in batches] == [3, 1]
    assert [i for b in batches for i in b["image_id"]] == [42, 7, 1001, 5]
    assert all(isinstance(im, Image.Image) and im.mode == "RGB"
               for b in batches for im in b["image"])
    assert batches[0]["captions"][1] == CAPTIONS[7]
    assert collate_pil([]) == {}


def test_s3_image_root_with_loader_workers(coco):
    import boto3
    from torch.utils.data import DataLoader

    from tests.s3fixture import moto_server, s3_env

    ann, images = coco
    with moto_server() as endpoint, s3_env(endpoint):
        s3 = boto3.client("s3")
        s3.create_bucket(Bucket="coco-ds")
        for _, name, _ in IMAGES[:2]:
            s3.put_object(Bucket="coco-ds", Key=f"val2017/{name}",
                          Body=(images / name).read_bytes())
        ds = COCODataset(ann, "s3://coco-ds/val2017/", ids=[7, 42, 5])
        assert [it["source"] for it in ds.iter_items()] == [
            "s3://coco-ds/val2017/000000000007.jpg", "s3://coco-ds/val2017/000000000042.jpg",
            "s3://coco-ds/val2017/000000000005.jpg"]
        item = ds[0]  # the parent process creates a client first: workers must not reuse it
        assert item["error"] is None and item["image"].size == (150, 100)
        loader = DataLoader(ds, batch_size=1, num_workers=2, collate_fn=collate_pil)
        got = {b["image_id"][0]: b for b in loader}
    assert got[7]["image"][0].size == (150, 100) and got[42]["image"][0].size == (128, 128)
    assert got[5]["image"] == [None] and "NotFoundError" in got[5]["error"][0]


def test_orchestrator_modules_import_no_heavy_libraries(python):
    code = ("import orchestrator.coco, orchestrator.evaluate, orchestrator.report, sys; "
            "heavy = [m for m in ('torch', 'transformers', 'diffusers', 'easyocr') "
            "if m in sys.modules]; assert not heavy, heavy")
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=120,
                       check=False, cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == 0, r.stderr
