"""What a batch's reference-free scores say, for ``itx eval`` and ``itx report``.

``summary(records)`` gives, per score family (``clip:caption:<captioner>``, ``clip:prompt``,
and ``clip:output``, ``clip-i:output``, ``ocr-readback:output`` over every output ``k``),
the mean, median, 10th and 90th percentile and count; per captioner its CLIPScore
statistics and how often its caption won ``--caption-for-prompt best``; and how many outputs
the safety checker flagged. ``ref_clip_scores(records, annotations)`` adds RefCLIPScore
(Hessel et al. 2021: the harmonic mean of CLIPScore and the best cosine between the caption
and a reference caption, clipped at 0) per captioner, against COCO references.

No torch here at import; RefCLIPScore loads the records' CLIP on first use.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from workers.stages import score as S

SKIPPED = "skipped"


def score_keys(records: Iterable[Mapping]) -> list[str]:
    """Every score key in the records (``clip-i:output:0``, …), in first-seen order."""
    seen: dict[str, None] = {}
    for r in records:
        for k in r.get("scores") or {}:
            seen.setdefault(k, None)
    return list(seen)


def stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=np.float64)
    if not a.size:
        return {"n": 0}
    return {"n": int(a.size), "mean": round(float(a.mean()), 4),
            "median": round(float(np.median(a)), 4),
            "p10": round(float(np.percentile(a, 10)), 4),
            "p90": round(float(np.percentile(a, 90)), 4)}


def summary(records: Iterable[Mapping]) -> dict[str, Any]:
    """``{"scores": {family: stats}, "captioners": {c: {"clip": stats, "best": wins}},
    "flags": {flag family: count true}, "items": n scored}``."""
    fam: dict[str, list[float]] = {}
    wins: dict[str, int] = {}
    flags: dict[str, int] = {}
    items = 0
    for r in records:
        sc = r.get("scores") or {}
        items += bool(sc)
        for k, v in sc.items():
            if isinstance(v, (int, float)):
                fam.setdefault(S.family(k), []).append(float(v))
        if r.get("prompt_caption"):
            wins[r["prompt_caption"]] = wins.get(r["prompt_caption"], 0) + 1
        for k, v in (r.get("flags") or {}).items():
            flags[S.family(k)] = flags.get(S.family(k), 0) + bool(v)
    prefix = S.caption_key("")
    caps = {k[len(prefix):]: {"clip": stats(v), "best": wins.get(k[len(prefix):], 0)}
            for k, v in fam.items() if k.startswith(prefix)}
    return {"items": items, "scores": {k: stats(v) for k, v in fam.items()}, "captioners": caps,
            "flags": flags}


def ref_clip_scores(records: list[Mapping], coco_annotations, *, model: str | None = None
                    ) -> dict[str, Any]:
    """Mean RefCLIPScore per captioner over the records matched to COCO images; the CLIPScore
    half is the record's ``clip:caption:<c>``, so records need ``--score``. ``model``: the
    CLIP ref (default: the records' ``models["score:clip"]``)."""
    from orchestrator.evaluate import _load_references, match_records

    images, refs = _load_references(coco_annotations)
    pairs, _ = match_records(records, images)
    todo = [(i, r, c, text) for i, r in pairs if refs.get(i)
            for c, text in (r.get("captions") or {}).items()
            if S.caption_key(c) in (r.get("scores") or {})]
    if not todo:
        return {SKIPPED: {"RefCLIPScore": "no matched record has clip:caption scores "
                                          "(run with --score)"}}
    key = next((k for r in records for k in r.get("models") or {} if k.startswith("score:")),
               "score:clip")
    ref = model or next((r["models"][key] for r in records if key in (r.get("models") or {})),
                        None)
    from workers.models.cache import load_backend

    name = key.split(":", 1)[1]
    backend = load_backend("score", name, ref=ref)
    ids = sorted({i for i, *_ in todo})
    ref_texts = [t for i in ids for t in refs[i]]
    embs = backend.run([t for *_, t in todo] + ref_texts, kind="text")
    cand, ref_embs = embs[:len(todo)], iter(embs[len(todo):])
    by_image = {i: np.stack([next(ref_embs) for _ in refs[i]]) for i in ids}
    per: dict[str, list[float]] = {}
    for (i, r, c, _), e in zip(todo, cand):
        clip_s = float(r["scores"][S.caption_key(c)])
        best_ref = max(float(np.max(by_image[i].astype(np.float64) @ e.astype(np.float64))), 0.0)
        hm = 0.0 if clip_s + best_ref == 0 else 2 * clip_s * best_ref / (clip_s + best_ref)
        per.setdefault(c, []).append(hm)
    return {c: {"RefCLIPScore": round(float(np.mean(v)), 4), "images": len(v)}
            for c, v in per.items()}


def format_summary(s: Mapping[str, Any]):
    """A rich table of ``summary``'s score statistics, then one of the captioners."""
    from rich.console import Group
    from rich.table import Table

    t = Table("score", "n", "mean", "median", "p10", "p90",
              title=f"Scores ({s['items']} scored items)")
    for k, st in s["scores"].items():
        t.add_row(k, str(st["n"]), *(f"{st[x]:.4f}" for x in ("mean", "median", "p10", "p90")))
    parts = [t]
    if s["captioners"]:
        c = Table("captioner", "CLIPScore mean", "median", "p10", "p90", "best", title="Captioners")
        for name, v in s["captioners"].items():
            st = v["clip"]
            c.add_row(name, *(f"{st[x]:.4f}" for x in ("mean", "median", "p10", "p90")),
                      str(v["best"]))
        parts.append(c)
    if s["flags"]:
        f = Table("flag", "outputs flagged", title="Flags")
        for k, n in s["flags"].items():
            f.add_row(k, str(n))
        parts.append(f)
    return Group(*parts)
