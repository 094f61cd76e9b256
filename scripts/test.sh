#!/usr/bin/env bash
# The test suite: offline, CPU, real Redis/S3/Celery processes started by the fixtures.
set -euo pipefail
cd "$(dirname "$0")/.."
export ITX_MODEL_DIR="${ITX_MODEL_DIR:-$PWD/.itx-models}"
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
