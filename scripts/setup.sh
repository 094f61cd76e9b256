#!/usr/bin/env bash
# Set up itx on a fresh Debian/Ubuntu machine: system packages (when run as root),
# a virtual environment in .venv with every extra, and the tiny-random models.
# Idempotent: a second run only checks.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(tesseract-ocr tesseract-ocr-eng fonts-dejavu-core redis-server)
if [ "${ITX_SETUP_DEV:-0}" = "1" ]; then
  # test-only tools: headless browser for the report test, compose for config checks
  APT_PACKAGES+=(chromium docker-compose default-jre-headless)
fi
if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
else
  echo "setup: not root or no apt-get; make sure these are installed: ${APT_PACKAGES[*]}" >&2
fi

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[worker,eval,dev]"
.venv/bin/itx models tiny >/dev/null
echo "setup: done (.venv ready; tiny-random models in ${ITX_MODEL_DIR:-~/.cache/itx/models})"
