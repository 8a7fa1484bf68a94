"""Integration tests of temperance inside vLLM (CPU build): run by scripts/test-vllm.sh in
.venv-vllm, never by the main `python -m pytest` (whose testpaths leave this directory out).

One CPU thread for torch here and in vLLM's worker (no core pinning: the machine is shared), a
small KV cache, no download.
"""

import os

for k, v in {"HF_HUB_OFFLINE": "1", "VLLM_CPU_KVCACHE_SPACE": "1", "VLLM_CPU_OMP_THREADS_BIND": "nobind",
             "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "VLLM_NO_USAGE_STATS": "1",
             "DO_NOT_TRACK": "1"}.items():
    os.environ.setdefault(k, v)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(scope="session")
def model_dir() -> str:
    """The embedded SmolLM2 as a plain HF directory (converted once by temperance)."""
    from temperance.models import model_dir

    return str(model_dir("smollm2"))
