"""JSONL and CSV manifests: one image reference a line/row, with optional questions/edits."""
from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

from orchestrator.inputs.files import from_ref
from orchestrator.inputs.item import InputItem


def listish(v) -> list[str]:
    """A manifest cell: a JSON list, a '|'-separated string, or empty."""
    if v is None or v == "":
        return []
    if isinstance(v, list):
        return [str(x) for x in v]
    s = str(v).strip()
    if s.startswith("["):
        try:
            return [str(x) for x in json.loads(s)]
        except json.JSONDecodeError:
            pass
    return [p.strip() for p in s.split("|") if p.strip()]


def iter_manifest(path: Path) -> Iterator[InputItem]:
    """JSONL (one object a line) or CSV with a header; column ``image`` required,
    ``questions`` and ``edit`` optional. Relative paths are relative to the manifest."""
    base = path.parent
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if "image" not in (reader.fieldnames or []):
                yield InputItem(source=str(path), error="bad_manifest: CSV has no 'image' column")
                return
            for n, row in enumerate(reader, 2):
                if not row.get("image"):
                    yield InputItem(source=f"{path}:{n}", error="bad_manifest: empty 'image' cell")
                    continue
                yield from_ref(row["image"], base, questions=listish(row.get("questions")),
                               edit=listish(row.get("edit")), manifest_dir=base)
        return
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                ref = row["image"]
                if not isinstance(ref, str) or not ref.strip():
                    raise TypeError(ref)
            except (json.JSONDecodeError, KeyError, TypeError):
                yield InputItem(source=f"{path}:{n}",
                                error="bad_manifest: line is not a JSON object with an 'image' key")
                continue
            yield from_ref(str(ref), base, questions=listish(row.get("questions")),
                           edit=listish(row.get("edit")),
                           coco_id=row.get("coco_id"), manifest_dir=base)
