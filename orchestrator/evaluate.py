"""Caption metrics against COCO references, and VQA accuracy.

``caption_metrics(records, annotations)`` scores every captioner found in the result
records (``record["captions"] = {model: text}``) against the reference captions of a
COCO annotation file, with pycocoevalcap's scorers, as the COCO caption leaderboard does:

- ``Bleu_1`` … ``Bleu_4`` (corpus BLEU, closest reference length), ``ROUGE_L``,
  ``CIDEr`` (pycocoevalcap's ``Cider``, i.e. CIDEr-D: clipped n-gram counts and a
  length penalty; idf from the references of the scored images, so it needs more than
  one image to mean anything): pure Python.
- ``METEOR`` (the bundled ``meteor-1.5.jar``) and ``SPICE`` need Java; SPICE also needs
  Stanford CoreNLP 3.6.0, which pycocoevalcap downloads on first use. Where they cannot
  run, they are listed under the top-level ``"skipped"`` key with the reason, never
  silently dropped.

Captions and references are tokenised like COCO's evaluation: Stanford's PTBTokenizer
(bundled jar, run with Java), lower-cased, punctuation tokens removed. Without Java a
built-in Python tokeniser following the same rules is used (identical on ordinary
captions; it may differ on exotic punctuation) and ``"skipped"`` says so under
``"PTB (Java)"``.

Records are matched to annotation images by ``coco_id``, else by file name (the last
path segment of ``file_name`` or ``source``). The result::

    {"blip": {"Bleu_1": 0.71, …, "CIDEr": 0.93, "images": 500},
     "git":  {…},
     "skipped": {"SPICE": "Stanford CoreNLP models are not installed …"}}

``"images"`` is how many images that captioner was scored on (an item whose captioner
failed has no caption for it and is left out).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from functools import lru_cache
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import unquote, urlparse

__all__ = [
    "ALL_METRICS", "caption_metrics", "format_table", "load_manifest", "match_records",
    "normalize_answer", "ptb_tokenize", "python_tokenize", "vqa_accuracy",
]

#: metric groups, in report order ("Bleu" is Bleu_1 … Bleu_4)
ALL_METRICS = ("Bleu", "METEOR", "ROUGE_L", "CIDEr", "SPICE")
_COLUMNS = ("Bleu_1", "Bleu_2", "Bleu_3", "Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "SPICE",
            "RefCLIPScore")  # RefCLIPScore: orchestrator.scores, with --score records
_JAVA_METRICS = ("METEOR", "SPICE")
SKIPPED = "skipped"


# ----------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------
def load_manifest(path: str | Path) -> list[dict]:
    """Result records from a JSONL manifest (one JSON object per line; blank lines ignored)."""
    p = str(path)
    if p.startswith("file://"):
        p = unquote(urlparse(p).path)
    records = []
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{p}:{n}: not a JSON line ({e.msg})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{p}:{n}: a result record must be a JSON object")  # noqa: TRY004
            records.append(rec)
    return records


# ----------------------------------------------------------------------------
# matching records to annotation images
# ----------------------------------------------------------------------------
def _basename(s: str) -> str:
    return PurePosixPath(unquote(urlparse(s).path if "://" in s else s.replace("\\", "/"))).name


def match_records(records: Iterable[dict], images: Mapping[int, dict]
                  ) -> tuple[list[tuple[int, dict]], int]:
    """Pair records with annotation image ids: by ``coco_id``, else by file name.

    Returns ``([(image_id, record), …], unmatched)``; the first record of an image wins.
    """
    by_name: dict[str, int | None] = {}
    for image_id, img in images.items():
        name = _basename(str(img.get("file_name", "")))
        by_name[name] = None if name in by_name else image_id  # ambiguous names match nothing
    pairs, seen, unmatched = [], set(), 0
    for rec in records:
        image_id = None
        cid = rec.get("coco_id")
        if cid is not None and str(cid).strip().lstrip("-").isdigit() and int(cid) in images:
            image_id = int(cid)
        else:
            for key in ("file_name", "source"):
                if rec.get(key):
                    image_id = by_name.get(_basename(str(rec[key])))
                    if image_id is not None:
                        break
        if image_id is None:
            unmatched += 1
        elif image_id not in seen:
            seen.add(image_id)
            pairs.append((image_id, rec))
    return pairs, unmatched


# ----------------------------------------------------------------------------
# tokenisation
# ----------------------------------------------------------------------------
#: tokens COCO's evaluation drops after PTB tokenisation (pycocoevalcap's list)
PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-",
                          ".", "?", "!", ",", ":", "-", "--", "...", ";"])


def _tokenizer_jar() -> Path:
    import pycocoevalcap

    return Path(next(iter(pycocoevalcap.__path__))) / "tokenizer" / "stanford-corenlp-3.4.1.jar"


@lru_cache(maxsize=1)
def java_status() -> str | None:
    """``None`` when a working ``java`` is on PATH, else why not."""
    java = shutil.which("java")
    if java is None:
        return "java not found on PATH"
    try:
        r = subprocess.run([java, "-version"], capture_output=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"java does not run: {e}"
    return None if r.returncode == 0 else f"java -version exited with {r.returncode}"


def _one_line(s: str) -> str:
    return " ".join(str(s).splitlines())


def ptb_tokenize(sentences: list[str]) -> list[str]:
    """Stanford PTBTokenizer (Java), lower-cased, COCO's punctuation removed; one call."""
    if not sentences:
        return []
    with tempfile.TemporaryDirectory(prefix="itx-ptb-") as tmp:
        src = Path(tmp) / "sentences.txt"
        src.write_text("\n".join(_one_line(s) for s in sentences), encoding="utf-8")
        r = subprocess.run(
            ["java", "-cp", str(_tokenizer_jar()), "edu.stanford.nlp.process.PTBTokenizer",
             "-preserveLines", "-lowerCase", "-encoding", "utf-8", str(src)],
            capture_output=True, timeout=600, check=False)
    if r.returncode != 0:
        raise RuntimeError(f"PTBTokenizer failed ({r.returncode}): "
                           f"{r.stderr.decode('utf-8', 'replace')[-500:]}")
    lines = r.stdout.decode("utf-8", "replace").split("\n")
    if len(lines) < len(sentences):
        raise RuntimeError(f"PTBTokenizer returned {len(lines)} lines for {len(sentences)}")
    return [" ".join(w for w in line.rstrip().split(" ") if w and w not in PUNCTUATIONS)
            for line in lines[:len(sentences)]]


_ABBREVIATIONS = frozenset(("mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "etc", "inc", "co",
                            "ltd", "no", "mt", "ft", "ave"))
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-", "{": "-lcb-", "}": "-rcb-"}
_SPLIT_WORDS = {"cannot": "can not", "gonna": "gon na", "wanna": "wan na", "gotta": "got ta"}


def _python_tokens(s: str) -> list[str]:
    s = _one_line(s).lower()
    s = (s.replace("\u201c", '"').replace("\u201d", '"').replace("\u2018", "'")
         .replace("\u2019", "'").replace("\u2014", " -- ").replace("\u2013", " -- "))
    for b, name in _BRACKETS.items():
        s = s.replace(b, f" {name} ")
    s = s.replace('"', " '' ")
    s = re.sub(r"\.\.\.+|\u2026", " ... ", s)
    s = re.sub(r"--+", " -- ", s)
    s = re.sub(r"(?<!\d)[,:]|[,:](?!\d)", lambda m: f" {m.group(0)} ", s)  # 1,000 / 10:30 stay
    s = re.sub(r"[;]|[?!]+", lambda m: f" {m.group(0)} ", s)
    s = re.sub(r"([$#])(?=\d)", r"\1 ", s)
    s = re.sub(r"(?<=\d)%", " %", s)
    s = re.sub(r"(^|\s)'(?=\w)", r"\1` ", s)                     # opening quote
    s = re.sub(r"(\w)n't\b", r"\1 n't", s)                      # don't -> do n't, can't -> ca n't
    s = re.sub(r"(\w)'(s|re|ve|ll|d|m)\b", r"\1 '\2", s)        # it's -> it 's
    s = re.sub(r"(?<=\w)'(?=\s|$)", " '", s)                     # dogs' -> dogs '
    out: list[str] = []
    for tok in s.split():
        tok = _SPLIT_WORDS.get(tok, tok)
        if tok.endswith(".") and tok.strip(".") and not (
                re.fullmatch(r"(?:[a-z]\.)+", tok) or tok[:-1] in _ABBREVIATIONS):
            out.extend([tok[:-1], "."])
        else:
            out.extend(tok.split(" "))
    return [t for t in out if t and t not in PUNCTUATIONS]


def python_tokenize(sentences: list[str]) -> list[str]:
    """A pure-Python PTB-style tokeniser for machines without Java.

    Same rules as COCO's evaluation where captions need them: lower case; ``, ; : ? !``,
    quotes, brackets (``-lrb-`` …), ``...`` and ``--`` split off; sentence-final periods
    split off unless the word is an abbreviation (``u.s.``, ``mr.``); ``n't`` and
    ``'s 're 've 'll 'd 'm`` split (``can't`` → ``ca n't``); ``$5`` → ``$ 5``; then the
    punctuation tokens COCO drops are removed.
    """
    return [" ".join(_python_tokens(s)) for s in sentences]


def _tokenize(sentences: list[str], tokenizer: str, skipped: dict[str, str]) -> list[str]:
    if tokenizer not in ("auto", "ptb", "python"):
        raise ValueError(f"tokenizer must be auto, ptb or python, not {tokenizer!r}")
    if tokenizer == "python":
        return python_tokenize(sentences)
    why = java_status()
    if why is None:
        try:
            return ptb_tokenize(sentences)
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            why = str(e)
    if tokenizer == "ptb":
        raise RuntimeError(f"PTB tokenisation needs Java: {why}")
    skipped["PTB (Java)"] = f"{why}; used the built-in PTB-style tokenizer"
    return python_tokenize(sentences)


# ----------------------------------------------------------------------------
# caption metrics
# ----------------------------------------------------------------------------
def _load_references(coco_annotations) -> tuple[dict[int, dict], dict[int, list[str]]]:
    from orchestrator.coco import COCODataset, load_captions

    if isinstance(coco_annotations, COCODataset):
        images = {it["coco_id"]: {"file_name": it["file_name"]}
                  for it in coco_annotations.iter_items()}
        return images, coco_annotations.references()
    return load_captions(coco_annotations)


def _spice_missing() -> str | None:
    import pycocoevalcap

    lib = Path(next(iter(pycocoevalcap.__path__))) / "spice" / "lib"
    jars = [lib / "stanford-corenlp-3.6.0.jar", lib / "stanford-corenlp-3.6.0-models.jar"]
    if not all(j.is_file() for j in jars):
        return ("Stanford CoreNLP 3.6.0 is not installed in pycocoevalcap/spice/lib "
                "(needs a download: run `python -c 'from pycocoevalcap.spice.spice import "
                "Spice; Spice()'` once with internet access)")
    if not os.access(lib.parent, os.W_OK):
        return f"SPICE writes its cache inside {lib.parent}, which is read-only"
    return None


class _JavaScorers:
    """METEOR and SPICE, started at most once per evaluation; a failure skips the metric."""

    def __init__(self, wanted: set[str], skipped: dict[str, str]):
        self.wanted, self.skipped = wanted, skipped
        self._meteor = None

    def close(self) -> None:
        m, self._meteor = self._meteor, None
        if m is not None:
            if m.lock.locked():  # left held by a failed call; its __del__ would wait forever
                m.lock.release()
            m.meteor_p.kill()
            m.meteor_p.wait()

    def meteor(self, gts: dict, res: dict) -> float:
        from pycocoevalcap.meteor.meteor import Meteor

        clean = lambda s: s.replace("|||", " ").replace("  ", " ")  # "|||" is its separator
        if self._meteor is None:
            self._meteor = Meteor()
        score, _ = self._meteor.compute_score(
            {k: [clean(r) for r in v] for k, v in gts.items()},
            {k: [clean(h) for h in v] for k, v in res.items()})
        return float(score)

    def spice(self, gts: dict, res: dict) -> float:
        from pycocoevalcap.spice.spice import Spice

        score, _ = Spice().compute_score(gts, res)
        return float(score)

    def score(self, gts: dict, res: dict) -> dict[str, float]:
        out = {}
        for name, fn in (("METEOR", self.meteor), ("SPICE", self.spice)):
            if name not in self.wanted or name in self.skipped:
                continue
            why = java_status() or (_spice_missing() if name == "SPICE" else None)
            if why is None:
                try:
                    out[name] = fn(gts, res)
                    continue
                except Exception as e:  # noqa: BLE001 - an external tool failed: report, go on
                    why = f"{type(e).__name__}: {e}"[:300]
                    if name == "METEOR":
                        self.close()
            self.skipped[name] = why
        return out


def _score(gts: dict, res: dict, wanted: set[str], java: _JavaScorers) -> dict[str, float]:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge

    out: dict[str, float] = {}
    if "Bleu" in wanted:
        bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
        out.update({f"Bleu_{n}": float(b) for n, b in enumerate(bleu, 1)})
    out.update(java.score(gts, res))
    if "ROUGE_L" in wanted:
        out["ROUGE_L"] = float(Rouge().compute_score(gts, res)[0])
    if "CIDEr" in wanted:
        out["CIDEr"] = float(Cider().compute_score(gts, res)[0])
    return {k: out[k] for k in _COLUMNS if k in out}


def caption_metrics(records: Iterable[dict], coco_annotations, *,
                    metrics: Iterable[str] | None = None,
                    tokenizer: str = "auto") -> dict[str, Any]:
    """Score every captioner in ``records`` against COCO reference captions.

    Args:
        records: result records (``"captions": {model: text}`` and ``coco_id`` or ``source``).
        coco_annotations: a COCO captions annotation file, or a ``COCODataset``.
        metrics: a subset of ``ALL_METRICS`` (default: all of them).
        tokenizer: ``"auto"`` (PTB via Java, else the Python one), ``"ptb"`` or ``"python"``.

    Returns ``{captioner: {metric: value, …, "images": n}, "skipped": {metric: reason}}``.
    Raises ``ValueError`` when no record matches an annotated image or none has a caption.
    """
    wanted = set(ALL_METRICS if metrics is None else metrics)
    unknown = wanted - set(ALL_METRICS)
    if unknown:
        raise ValueError(f"unknown metrics {sorted(unknown)}; choose from {list(ALL_METRICS)}")
    images, refs = _load_references(coco_annotations)
    records = list(records)
    pairs, _ = match_records(records, images)
    if not pairs:
        raise ValueError(f"none of {len(records)} records matches an image of the annotations "
                         "(matched by coco_id, else by file name)")

    # 1. collect (captioner, image id, caption) for images that have references
    hyps: dict[str, dict[int, str]] = {}
    for image_id, rec in pairs:
        if not refs.get(image_id):
            continue
        for model, text in (rec.get("captions") or {}).items():
            if isinstance(text, str):
                hyps.setdefault(str(model), {})[image_id] = text
    if not hyps:
        raise ValueError("no captions to score: the matched records have no captions "
                         "(or their images have no reference captions)")

    # 2. tokenise everything in one pass (one Java start)
    skipped: dict[str, str] = {}
    ref_ids = sorted({i for h in hyps.values() for i in h})
    flat = [r for i in ref_ids for r in refs[i]] + [t for h in hyps.values() for t in h.values()]
    tokens = iter(_tokenize(flat, tokenizer, skipped))
    gts_all = {i: [next(tokens) for _ in refs[i]] for i in ref_ids}
    res_all = {m: {i: next(tokens) for i in h} for m, h in hyps.items()}

    # 3. score each captioner on the images it captioned
    result: dict[str, Any] = {}
    java = _JavaScorers(wanted, skipped)
    try:
        for model, res in res_all.items():
            gts = {i: gts_all[i] for i in res}
            scores = _score(gts, {i: [t] for i, t in res.items()}, wanted, java)
            result[model] = {**scores, "images": len(res)}
    finally:
        java.close()
    result[SKIPPED] = skipped
    return result


# ----------------------------------------------------------------------------
# VQA accuracy
# ----------------------------------------------------------------------------
_VQA_PUNCT = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-",
              ">", "<", "@", "`", ",", "?", "!")
_NUMBER_WORDS = {w: str(i) for i, w in enumerate(("zero", "one", "two", "three", "four", "five",
                                                 "six", "seven", "eight", "nine", "ten"))}
_NUMBER_WORDS["none"] = "0"
_ARTICLES = frozenset(("a", "an", "the"))
# contractions written without the apostrophe get it back ("dont" -> "don't")
_CONTRACTIONS = {c.replace("'", ""): c for c in str.split(
    "ain't aren't can't could've couldn't couldn't've didn't doesn't don't hadn't hadn't've "
    "hasn't haven't he'd he'd've he's how'd how'll how's isn't it'd it'd've it'll ma'am "
    "mightn't mightn't've might've mustn't must've needn't not've o'clock oughtn't shan't "
    "she'd've should've shouldn't shouldn't've somebody'd've somebody'll somebody's "
    "someone'd someone'd've someone'll someone's something'd something'd've something'll "
    "that's there'd there'd've there're there's they'd they'd've they'll they're they've "
    "wasn't we'd've we've weren't what'll what're what's what've when's where'd where's "
    "where've who'd who'd've who'll who's who've why'll why're why's won't would've "
    "wouldn't wouldn't've y'all you'd you'd've you'll you're you've")}
_DIGIT_COMMA = re.compile(r"\d,\d")
_PERIOD = re.compile(r"\.(?!\d)")


def normalize_answer(answer: str) -> str:
    """The VQA evaluation's answer normalisation.

    Punctuation is removed (glued) when it touches a space or the answer has a digit
    comma like ``1,000``, else it becomes a space; periods not before a digit go; then
    lower case, number words up to ten become digits (``none`` → ``0``), articles
    go and apostrophe-less contractions get their apostrophe back.
    """
    text = " ".join(str(answer).replace("\n", " ").replace("\t", " ").split())
    glue = bool(_DIGIT_COMMA.search(text))
    out = text
    for p in _VQA_PUNCT:
        out = out.replace(p, "" if glue or p + " " in text or " " + p in text else " ")
    out = _PERIOD.sub("", out)
    words = [_NUMBER_WORDS.get(w, w) for w in out.lower().split()]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words if w not in _ARTICLES)


def _question_key(q: str) -> str:
    return " ".join(str(q).lower().split()).rstrip(" ?")


def _read_json(path) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def answer_accuracy(answer: str, human_answers: list[str]) -> float:
    """VQA accuracy of one answer: the mean, over the 10 leave-one-out subsets of the
    human answers, of ``min(#humans in the subset who gave the answer / 3, 1)``.

    With 10 human answers this is 1 when 4+ humans agree with it, 0.9 for 3, 0.6 for 2,
    0.3 for 1 — the official evaluation's numbers (the common shorthand
    ``min(#humans/3, 1)`` is the same thing without the averaging).
    """
    a = normalize_answer(answer)
    gts = [normalize_answer(h) for h in human_answers]
    if not gts:
        raise ValueError("no human answers")
    matches = sum(g == a for g in gts)
    accs = [min(1.0, (matches - (g == a)) / 3.0) for g in gts]
    return sum(accs) / len(accs)


def vqa_accuracy(records: Iterable[dict], vqa_annotations, vqa_questions=None) -> dict[str, Any]:
    """Standard VQA accuracy of the records' answers (``record["vqa"] = {question: answer}``).

    ``vqa_annotations`` / ``vqa_questions`` are the VQA v2 JSON files (paths or loaded
    dicts); the questions file maps question text to ``question_id`` (it may be omitted
    when the annotations carry a ``question`` field). A record's answer is scored when
    its image (``coco_id``, else file name) has a question with the same text (case,
    spacing and a final ``?`` ignored).

    Returns ``{"accuracy": 0..1, "questions": n scored, "by_answer_type": {type: 0..1},
    "unmatched_records": n}``.
    """
    ann = vqa_annotations if isinstance(vqa_annotations, Mapping) else _read_json(vqa_annotations)
    qs = (vqa_questions if isinstance(vqa_questions, Mapping) or vqa_questions is None
          else _read_json(vqa_questions))
    text_of: dict[int, str] = {}
    if qs is not None:
        text_of = {int(q["question_id"]): q["question"] for q in qs.get("questions", [])}
    by_key: dict[tuple[int, str], dict] = {}
    images: dict[int, dict] = {}
    for a in ann.get("annotations", []):
        qtext = text_of.get(int(a["question_id"]), a.get("question"))
        if qtext is None:
            continue
        image_id = int(a["image_id"])
        by_key[(image_id, _question_key(qtext))] = a
        images.setdefault(image_id, {"file_name": a.get("file_name", f"#{image_id}")})
    if not by_key:
        raise ValueError("no questions: pass the VQA questions file with the annotations")
    # file names come from the questions/annotations when present (rare in VQA files)
    pairs, unmatched = match_records(records, images)

    accs: list[float] = []
    by_type: dict[str, list[float]] = {}
    for image_id, rec in pairs:
        for question, answer in (rec.get("vqa") or {}).items():
            a = by_key.get((image_id, _question_key(question)))
            if a is None or not isinstance(answer, str):
                continue
            acc = answer_accuracy(answer, [h["answer"] for h in a.get("answers", [])])
            accs.append(acc)
            by_type.setdefault(str(a.get("answer_type", "all")), []).append(acc)
    return {
        "accuracy": sum(accs) / len(accs) if accs else 0.0,
        "questions": len(accs),
        "by_answer_type": {t: sum(v) / len(v) for t, v in sorted(by_type.items())},
        "unmatched_records": unmatched,
    }


# ----------------------------------------------------------------------------
# table
# ----------------------------------------------------------------------------
def format_table(metrics: Mapping[str, Any], title: str = "Caption metrics"):
    """A rich ``Table``: one row per captioner, one column per metric computed."""
    from rich.markup import escape
    from rich.table import Table

    rows = {k: v for k, v in metrics.items() if k != SKIPPED and isinstance(v, Mapping)}
    cols = [c for c in _COLUMNS if any(c in v for v in rows.values())]
    table = Table(title=title)
    table.add_column("captioner", style="bold")
    table.add_column("images", justify="right")
    for c in cols:
        table.add_column(c, justify="right")
    for model, vals in rows.items():
        table.add_row(escape(str(model)), str(vals.get("images", "")),
                      *(f"{vals[c]:.3f}" if c in vals else "—" for c in cols))
    skipped = metrics.get(SKIPPED) or {}
    if skipped:
        table.caption = "\n".join(escape(f"{k} skipped: {v}") for k, v in skipped.items())
    return table
