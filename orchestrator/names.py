"""Batch names: a slug, so a name is one folder of the store (``runs/<name>/``) and nothing else."""
from __future__ import annotations

import re

MAX_NAME = 64
_SLUG = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def check_name(name: str) -> str:
    """``name`` if it is a batch name: letters, digits, ``.``, ``_`` and ``-``, starting with a
    letter or digit, at most MAX_NAME characters; else ``ValueError`` (one line)."""
    if not isinstance(name, str) or not name:
        raise ValueError("a batch name cannot be empty")
    if len(name) > MAX_NAME:
        raise ValueError(f"batch name of {len(name)} characters: at most {MAX_NAME}")
    if not _SLUG.fullmatch(name) or ".." in name:
        raise ValueError(f"batch name {name[:MAX_NAME]!r}: use letters, digits, '.', '_' and '-' "
                         f"(starting with a letter or digit, no '..')")
    return name
