"""Tiny offline models for the eval tests (a random Llama + a byte-level tokenizer), in memory or
saved as a model directory that `temperance.models.load(path)` (and so a worker process) can open."""

from __future__ import annotations

import functools
from pathlib import Path

from conftest_runtime_helpers import hf_tokenizer, tiny_llama


@functools.cache
def tiny_runtime():
    from temperance.runtime.hf import HFRuntime

    tok = hf_tokenizer()
    return HFRuntime(tiny_llama(vocab_size=len(tok), max_position_embeddings=512), tok)


def tiny_model_dir(root: Path) -> str:
    """Save the tiny model and tokenizer under `root` (once) and return the directory."""
    d = Path(root) / "tiny-llama"
    if not (d / "config.json").is_file():
        rt = tiny_runtime()
        rt.model.save_pretrained(d)
        rt.tokenizer.tok.save_pretrained(d)
    return str(d)
