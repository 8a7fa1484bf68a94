#!/usr/bin/env bash
# Integration tests of temperance inside vLLM (CPU build), in .venv-vllm (built or checked first by
# scripts/setup-vllm.sh, which is idempotent). Not part of the main `python -m pytest` run.
# One torch thread, vLLM's worker unpinned, a 1 GiB KV cache, offline; servers on 127.0.0.1 only.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-vllm.sh
export HF_HUB_OFFLINE=1 OMP_NUM_THREADS=1 VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind \
  VLLM_NO_USAGE_STATS=1 DO_NOT_TRACK=1 PYTHONUNBUFFERED=1
exec "${VENV_VLLM:-.venv-vllm}/bin/python" -m pytest -q -p no:cacheprovider tests_vllm "$@"
