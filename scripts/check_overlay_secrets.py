#!/usr/bin/env python3
"""Refuse to build an overlay whose Secret inputs are missing or still say CHANGE-ME.

    python3 scripts/check_overlay_secrets.py k8s/overlays/gpu && kubectl apply -k k8s/overlays/gpu

Every ``X.example`` in the overlay has a real ``X`` beside it (git-ignored) that the
kustomization reads; each must exist and hold no ``CHANGE-ME``. Prints one line and exits 1 at
the first problem; exits 0 silently otherwise. Standard library only.
"""
from __future__ import annotations

import sys
from pathlib import Path

MARK = "CHANGE-ME"


def problem(overlay: Path) -> str | None:
    examples = sorted(overlay.glob("*.example"))
    if not examples:
        return f"{overlay}: no *.example files: is this an overlay directory?"
    for example in examples:
        real = example.with_suffix("")
        if not real.is_file():
            return (f"{real}: missing; copy {example.name} to {real.name} and replace every "
                    f"{MARK}")
        for n, line in enumerate(real.read_text(encoding="utf-8").splitlines(), 1):
            if MARK in line and not line.lstrip().startswith("#"):
                what = line.split("=", 1)[0].strip() if "=" in line else f"line {n}"
                return f"{real}:{n}: {what} still has {MARK}; fill it in before building"
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: check_overlay_secrets.py OVERLAY_DIR", file=sys.stderr)
        return 2
    msg = problem(Path(argv[0]))
    if msg:
        print(f"error: {msg}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
