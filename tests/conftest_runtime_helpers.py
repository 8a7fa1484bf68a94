"""Tiny, offline builders for runtime / detok tests: a random Llama and two in-memory tokenizers.

A plain module (not a conftest): tests import it by name, since pytest's default "prepend" import
mode puts this tests/ directory on sys.path.
"""

from __future__ import annotations

import functools
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

torch.set_num_threads(1)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def tiny_llama(vocab_size: int = 300, seed: int = 0, **overrides):
    """A randomly initialised 2-layer Llama (GQA: 4 query / 2 KV heads), fp32, eval mode.

    `initializer_range=0.2` (10x the default) makes the logits far from uniform, so greedy
    choices are not decided by float noise when batched and single runs are compared.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = dict(
        vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, intermediate_size=128, max_position_embeddings=256,
        initializer_range=0.2, bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    cfg.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**cfg)).eval()


def byte_level_tokenizer() -> Tokenizer:
    """GPT-2-style byte-level BPE (like SmolLM2's): 3 specials, the 256 byte symbols, 3 merges.

    Every non-ASCII character is split into byte tokens, so multi-byte characters cross tokens.
    """
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    merges = [("h", "e"), ("l", "l"), ("Ġ", "w")]
    vocab = {s: i for i, s in enumerate(SPECIALS + alphabet + [a + b for a, b in merges])}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return tok


def sentencepiece_tokenizer() -> Tokenizer:
    """Llama/Gemma-style: Metaspace "▁" words, byte fallback for unknown characters, and a decoder
    that strips the leading space of whatever it decodes (so one token alone loses its space)."""
    pieces = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    words = ["▁hello", "▁world", "▁the", "▁", "▁a"] + list("abcdefghijklmnopqrstuvwxyz,.!")
    vocab = [(p, 0.0) for p in pieces[:3]] + [(p, -10.0) for p in pieces[3:]]
    vocab += [(w, -1.0 if len(w) > 2 else -5.0) for w in words]
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    tok.add_special_tokens(["<s>", "</s>"])
    return tok


def hf_tokenizer(tok: Tokenizer | None = None):
    """Wrap a `tokenizers.Tokenizer` as a transformers fast tokenizer with a ChatML template."""
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=tok or byte_level_tokenizer(),
        bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
    )


@functools.cache
def smollm2_runtime():
    """The real default model, loaded once per test process (1 thread). The first run ever
    converts the GGUF into the user cache (`$TEMPERANCE_CACHE` or ~/.cache/temperance/models)."""
    from temperance import models

    return models.load("smollm2", threads=1)
