"""Runtimes: the one place that runs a model, behind two small protocols.

A `Runtime` turns token ids into next-token logits and owns the KV cache; a `Tokenizer` turns text
into ids and back. The decoding loop talks only to these protocols, so the core of temperance never
imports transformers: `runtime/hf.py` (and `models.py`, which loads weights) are the only modules
that touch it, and this package imports `hf` lazily.

Threads: on small CPU machines torch's default (one thread per core) oversubscribes the cores when
anything else runs; `set_threads()` applies the default of `temperance.threads`: the free CPUs
(affinity minus the 1-minute load average), at least 1.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, Sequence

import torch

if TYPE_CHECKING:
    from .hf import HFRuntime, HFTokenizer

__all__ = ["Runtime", "Tokenizer", "HFRuntime", "HFTokenizer", "default_threads", "set_threads"]


class Runtime(Protocol):
    """A causal LM with a batched KV cache; rows are aligned with the loop's batch rows."""

    vocab_size: int           # V: width of the logits (may exceed the tokenizer's size)
    eos_token_ids: frozenset[int]
    max_context: int | None   # most positions the model supports (prompt + output)

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Start a new batch from prompt ids; return last-position logits [B, V] float32."""
        ...

    def decode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row [B] int64; return the next logits [B, V] float32."""
        ...

    def select(self, index: torch.Tensor) -> None:
        """Keep rows `index` [B'] (shrink, reorder or repeat) in the cache and the mask."""
        ...


class Tokenizer(Protocol):
    """Text <-> ids. `decode` is all the incremental detokenizer needs."""

    eos_token_ids: frozenset[int]

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...

    def apply_chat_template(self, messages: list[dict]) -> list[int]: ...

    def token_texts(self) -> list[str]: ...


def default_threads() -> int:
    """Return the default torch thread count: the free CPUs now (`temperance.threads`).

    More threads than free cores make OpenMP threads spin against each other: on a loaded 2-core
    machine, 2 threads decoded 3-7x slower than 1.
    """
    from ..threads import default_threads as free_cpus

    return free_cpus()


def set_threads(n: int | None = None) -> int:
    """Set torch's intra-op thread count (`None` -> `default_threads()`); return the count used.

    >>> set_threads(1)
    1
    """
    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be >= 1, got {n}")
    torch.set_num_threads(n)
    return n


def __getattr__(name: str):
    # Lazy: importing the runtime package must not import transformers-facing code.
    if name in ("HFRuntime", "HFTokenizer"):
        from . import hf

        return getattr(hf, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
