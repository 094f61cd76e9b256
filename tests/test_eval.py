"""Caption metrics and VQA accuracy against values worked out by hand."""
from __future__ import annotations

import json
import math

import pytest

from orchestrator import evaluate as ev
from orchestrator.evaluate import (
    caption_metrics,
    format_table,
    load_manifest,
    normalize_answer,
    python_tokenize,
    vqa_accuracy,
)

HAS_JAVA = ev.java_status() is None
FAST = ("Bleu", "ROUGE_L", "CIDEr")  # pure Python; METEOR starts a JVM (~5 s)

REFS = {
    1: ["A man riding a wave on top of a surfboard.", "A surfer rides a large wave in the ocean.",
        "A person on a surfboard riding a wave."],
    2: ["Two dogs playing with a frisbee in the grass.", "A pair of dogs run across a green field.",
        "Dogs chase a red frisbee on a lawn."],
    3: ["A plate of food with broccoli and rice.", "Some rice and vegetables on a white plate.",
        "A healthy meal of broccoli, chicken and rice."],
}


def write_coco(path, refs: dict[int, list[str]]):
    images = [{"id": i, "file_name": f"{i:012d}.jpg"} for i in refs]
    anns = [{"id": 100 * i + k, "image_id": i, "caption": c}
            for i, caps in refs.items() for k, c in enumerate(caps)]
    path.write_text(json.dumps({"images": images, "annotations": anns}))
    return path


@pytest.fixture()
def coco(tmp_path):
    return write_coco(tmp_path / "captions.json", REFS)


def records_for(captions: dict[str, dict[int, str]]) -> list[dict]:
    ids = sorted({i for caps in captions.values() for i in caps})
    return [{"id": f"r{i}", "coco_id": i, "source": f"in/{i:012d}.jpg",
             "captions": {m: caps[i] for m, caps in captions.items() if i in caps}}
            for i in ids]


def test_repeating_a_reference_scores_bleu4_one_and_beats_a_worse_captioner(coco):
    records = records_for({
        "echo": {i: refs[0] for i, refs in REFS.items()},
        "vague": {1: "a person in the water", 2: "an animal outside", 3: "some food"},
    })
    m = caption_metrics(records, coco, metrics=FAST)
    assert m["echo"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert m["echo"]["Bleu_1"] == pytest.approx(1.0, abs=1e-6)
    assert m["echo"]["ROUGE_L"] == pytest.approx(1.0)
    assert m["echo"]["images"] == m["vague"]["images"] == 3
    metrics = ["Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "ROUGE_L", "CIDEr"]
    assert sorted(m["echo"]) == sorted([*metrics, "images"])
    for k in metrics:
        assert m["echo"][k] > m["vague"][k], k
    if HAS_JAVA:
        assert m["skipped"] == {}


def test_bleu_by_hand(tmp_path):
    coco = write_coco(tmp_path / "c.json", {1: ["A cat sat on the mat."]})
    m = caption_metrics(records_for({"close": {1: "a cat sits on the mat"}, "short": {1: "A cat"}}),
                        coco, metrics=["Bleu"])
    # hypothesis "a cat sits on the mat" vs reference "a cat sat on the mat" (6 tokens each,
    # so no brevity penalty):
    #   unigrams  a cat on the mat            5/6 match
    #   bigrams   "a cat" "on the" "the mat"  3/5
    #   trigrams  "on the mat"                1/4
    #   4-grams   none                        0/3
    # Bleu_1 = 5/6; Bleu_2 = sqrt(5/6 * 3/5) = sqrt(1/2); Bleu_3 = cbrt(5/6 * 3/5 * 1/4) = 1/2;
    # Bleu_4 ~ 0 (pycocoevalcap adds 1e-15 to zero counts rather than smoothing)
    close = m["close"]
    assert close["Bleu_1"] == pytest.approx(5 / 6, abs=1e-6)
    assert close["Bleu_2"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    assert close["Bleu_3"] == pytest.approx(0.5, abs=1e-6)
    assert close["Bleu_4"] < 1e-3
    # "a cat": every n-gram matches (1/1 per order present) but 2 tokens against 6:
    # brevity penalty exp(1 - 6/2) = e^-2
    assert m["short"]["Bleu_1"] == pytest.approx(math.exp(-2), abs=1e-6)


def test_cider_by_hand(tmp_path):
    coco = write_coco(tmp_path / "c.json", {1: ["A black cat."], 2: ["A white dog."]})
    m = caption_metrics(records_for({"m": {1: "a black cat", 2: "a white cat"}}), coco,
                        metrics=["CIDEr"])
    # CIDEr-D with N=2 images: idf(g) = ln 2 - ln df(g); "a" occurs in both references -> 0,
    # every other n-gram in one -> ln 2 (an n-gram in no reference also gets ln 2).
    # Image 1, exact match: cosine 1 for n = 1, 2, 3; no 4-grams -> 0. mean = 3/4, x10 = 7.5.
    # Image 2, "a white cat" vs "a white dog": n=1 vectors (0, ln2, ln2) share "white" only
    # -> ln2^2 / (sqrt2 ln2)^2 = 1/2; n=2 "a white" shared of two bigrams each -> 1/2;
    # n=3 none -> 0; same length, no penalty. mean = 1/4, x10 = 2.5.
    # Corpus CIDEr = (7.5 + 2.5) / 2 = 5.0
    assert m["m"]["CIDEr"] == pytest.approx(5.0, abs=1e-9)


def test_matching_by_file_name_and_unmatched(coco):
    recs = [{"source": "s3://bkt/photos/000000000002.jpg", "captions": {"g": REFS[2][0]}},
            {"source": "/elsewhere/not-in-coco.jpg", "captions": {"g": "a dog"}},
            {"coco_id": 3, "source": "x.jpg", "captions": {"g": REFS[3][0], "h": None}},
            {"coco_id": 3, "captions": {"g": "duplicate of an item: the first one counts"}},
            {"id": "failed", "coco_id": 1, "captions": {}, "error": "boom"}]
    m = caption_metrics(recs, coco, metrics=["Bleu"])
    assert list(m) == ["g", "skipped"]
    assert m["g"]["images"] == 2 and m["g"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="none of 1 records"):
        caption_metrics([{"source": "nope.jpg", "captions": {"g": "x"}}], coco)
    with pytest.raises(ValueError, match="unknown metrics"):
        caption_metrics(recs, coco, metrics=["BLEU"])


@pytest.mark.skipif(not HAS_JAVA, reason="METEOR and the PTB tokenizer need Java")
def test_java_metrics_and_tokenizer(coco):
    records = records_for({"echo": {i: refs[1] for i, refs in REFS.items()},
                           "vague": {1: "a person in the water", 2: "animals", 3: "food"}})
    m = caption_metrics(records, coco, metrics=["METEOR", "SPICE", "Bleu"])
    assert 0.9 < m["echo"]["METEOR"] <= 1.0 and m["echo"]["METEOR"] > m["vague"]["METEOR"]
    # SPICE runs only where Stanford CoreNLP was downloaded; else it says why
    assert "SPICE" in m["echo"] or "CoreNLP" in m["skipped"]["SPICE"]
    # the Python tokenizer agrees with Stanford's PTBTokenizer on captions
    sents = [c for refs in REFS.values() for c in refs] + [
        "It's a dog's toy, isn't it?", "A \"quoted\" word (in brackets)...", "Mr. Smith's 1,000 $5 hats."]
    assert python_tokenize(sents) == ev.ptb_tokenize(sents)


def test_without_java_falls_back_and_says_so(coco, monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))  # no java on PATH
    ev.java_status.cache_clear()
    try:
        m = caption_metrics(records_for({"echo": {i: r[0] for i, r in REFS.items()}}), coco)
    finally:
        ev.java_status.cache_clear()
    assert m["echo"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert set(m["skipped"]) == {"PTB (Java)", "METEOR", "SPICE"}
    assert "java not found" in m["skipped"]["METEOR"]
    assert "built-in" in m["skipped"]["PTB (Java)"]


def test_format_table(coco):
    from rich.console import Console

    m = caption_metrics(records_for({"[bold]x": {1: REFS[1][0]}}), coco, metrics=["Bleu"])
    m["skipped"]["SPICE"] = "needs [CoreNLP]"
    console = Console(record=True, width=160)
    console.print(format_table(m))
    text = console.export_text()
    assert "[bold]x" in text and "Bleu_4" in text and "1.000" in text
    assert "SPICE skipped: needs [CoreNLP]" in text


def test_load_manifest(tmp_path):
    p = tmp_path / "manifest.jsonl"
    p.write_text('{"id": "a", "coco_id": 1}\n\n{"id": "b"}\n')
    assert [r["id"] for r in load_manifest(p)] == ["a", "b"]
    assert load_manifest(p.as_uri())[0]["coco_id"] == 1
    p.write_text('{"id": "a"}\n{oops\n')
    with pytest.raises(ValueError, match=r"manifest.jsonl:2"):
        load_manifest(p)


def test_vqa_answer_normalisation():
    assert normalize_answer("The Dog.") == "dog"
    assert normalize_answer("Two") == "2" and normalize_answer("none") == "0"
    assert normalize_answer("dont know") == "don't know"
    assert normalize_answer("1,000") == "1000"
    assert normalize_answer("red/blue") == "red blue"
    assert normalize_answer("  yes!\n") == "yes"
    assert normalize_answer("3.5") == "3.5"


def test_vqa_accuracy_by_hand(tmp_path):
    def answers(*pairs):
        return [{"answer": a, "answer_id": k} for k, a in
                enumerate(a for a, n in pairs for _ in range(n))]

    questions = {"questions": [
        {"question_id": 11, "image_id": 1, "question": "How many dogs are there?"},
        {"question_id": 12, "image_id": 1, "question": "Is it raining?"},
        {"question_id": 21, "image_id": 2, "question": "How many dogs are there?"}]}
    annotations = {"annotations": [
        {"question_id": 11, "image_id": 1, "answer_type": "number",
         "answers": answers(("2", 2), ("two", 2), ("3", 3), ("4", 3))},
        {"question_id": 12, "image_id": 1, "answer_type": "yes/no",
         "answers": answers(("yes", 1), ("no", 9))},
        {"question_id": 21, "image_id": 2, "answer_type": "number",
         "answers": answers(("3", 10))}]}
    (tmp_path / "a.json").write_text(json.dumps(annotations))
    (tmp_path / "q.json").write_text(json.dumps(questions))
    records = [
        {"coco_id": 1, "vqa": {"how many dogs are there": "Two.", "is it raining?": "yes",
                               "what color?": "red"}},  # a question VQA does not have: ignored
        {"coco_id": 2, "vqa": {"How many dogs are there?": "5"}},
        {"coco_id": 9, "vqa": {"How many dogs are there?": "3"}},  # no such image
    ]
    r = vqa_accuracy(records, tmp_path / "a.json", tmp_path / "q.json")
    # q11: "two." -> "2"; 4 of 10 humans said 2 ("2" x2, "two" x2): any 9 of them still hold
    #      >= 3 -> 1.0.
    # q12: 1 human said yes: 9 of the 10 leave-one-out subsets hold it once (1/3), one
    #      holds it 0 times -> 9/30 = 0.3.
    # q21: nobody said 5 -> 0.  Overall (1.0 + 0.3 + 0) / 3.
    assert r["questions"] == 3
    assert r["accuracy"] == pytest.approx(1.3 / 3)
    assert r["by_answer_type"] == pytest.approx({"number": 0.5, "yes/no": 0.3})
    assert r["unmatched_records"] == 1
    # 3 of 10 humans: 0.9 (the official leave-one-out average; min(3/3, 1) without it)
    assert ev.answer_accuracy("3", [a["answer"] for a in annotations["annotations"][0]["answers"]]
                              ) == pytest.approx(0.9)


def test_dataset_as_references(coco, tmp_path):
    from orchestrator.coco import COCODataset

    ds = COCODataset(coco, tmp_path, ids=[2, 3])  # the selected images only; nothing is read
    recs = records_for({"echo": {i: REFS[i][0] for i in (1, 2, 3)}})
    m = caption_metrics(recs, ds, metrics=["Bleu"])
    assert m["echo"]["images"] == 2 and m["echo"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
