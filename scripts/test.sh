#!/usr/bin/env bash
# The test suite: offline, CPU, real Redis/S3/Celery processes started by the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
export ITX_MODEL_DIR="${ITX_MODEL_DIR:-$PWD/.itx-models}"
# -q unless the caller sets the verbosity: a second -q (-qq) makes pytest drop its
# "N passed in …" summary line, so `bash scripts/test.sh -q` must not add one of its own.
quiet=(-q)
for a in "$@"; do
  case "$a" in
    -q|-qq|-qqq|--quiet|-v|-vv|-vvv|--verbose|--verbosity|--verbosity=*) quiet=() ;;
  esac
done
exec .venv/bin/python -m pytest "${quiet[@]}" -p no:cacheprovider "$@"
