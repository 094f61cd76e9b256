#!/usr/bin/env bash
# The test suite: offline, CPU, real Redis/S3/Celery processes started by the fixtures.
# Two pytest-xdist workers (one test file each at a time: module fixtures stay in one process)
# when pytest-xdist is installed (the dev extra); ITX_TEST_WORKERS=N sets how many, 0 runs
# serially; an -n, --dist or -p no:xdist given here replaces these.
set -euo pipefail
cd "$(dirname "$0")/.."
export ITX_MODEL_DIR="${ITX_MODEL_DIR:-$PWD/.itx-models}"
# -q unless the caller sets the verbosity: a second -q (-qq) makes pytest drop its
# "N passed in …" summary line, so `bash scripts/test.sh -q` must not add one of its own.
quiet=(-q)
workers=${ITX_TEST_WORKERS:-2}
prev=
for a in "$@"; do
  case "$a" in
    -q|-qq|-qqq|--quiet|-v|-vv|-vvv|--verbose|--verbosity|--verbosity=*) quiet=() ;;
    -n|-n*|--numprocesses|--numprocesses=*|--dist|--dist=*|-pno:xdist) workers=0 ;;
  esac
  [ "$prev" = "-p" ] && [ "$a" = "no:xdist" ] && workers=0
  prev=$a
done
parallel=()
if [ "$workers" != "0" ] && .venv/bin/python -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
fi
exec .venv/bin/python -m pytest "${quiet[@]}" "${parallel[@]}" -p no:cacheprovider "$@"
