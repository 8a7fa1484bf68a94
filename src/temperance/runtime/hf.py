"""`HFRuntime` and `HFTokenizer`: a transformers causal LM behind the `Runtime` protocol.

Contract:
- `prefill(prompts)` starts a batch: prompts of different lengths are LEFT-padded into one
  [B, T] tensor with an attention mask and explicit position ids (`cumsum(mask) - 1`, the same
  as `model.generate`), so every row sees exactly the positions it would see alone.
- `decode(tokens)` feeds one token per row through the KV cache and extends the mask by one column.
- `select(index)` re-indexes the batch dimension of the cache, the mask and the positions, the
  same index the loop applies to its own per-row state. Repeated indices are allowed (n samples
  per prompt, beams), so it is an `index_select`, not a boolean filter.
- Logits come back as float32 [B, V] for the last position only (`logits_to_keep=1`: the
  [B, T, V] prefill logits are never materialised).

The runtime knows nothing about sampling; it receives duck-typed transformers objects and never
imports transformers itself (`models.py` does the loading).

Tiny example (a random 2-layer Llama; no download):

>>> import torch
>>> from transformers import LlamaConfig, LlamaForCausalLM
>>> _ = torch.manual_seed(0)
>>> cfg = LlamaConfig(vocab_size=32, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
...                   num_attention_heads=2, num_key_value_heads=1)
>>> rt = HFRuntime(LlamaForCausalLM(cfg))
>>> rt.prefill([[1, 2, 3], [4]]).shape           # [B, V]
torch.Size([2, 32])
>>> rt.select(torch.tensor([1, 1, 0]))           # repeat row 1, reorder
>>> rt.decode(torch.tensor([5, 6, 7])).shape
torch.Size([3, 32])
"""

from __future__ import annotations

import inspect
from typing import Any, Iterable, Sequence

import torch
from torch import Tensor

__all__ = ["HFRuntime", "HFTokenizer", "cache_argument", "eos_ids"]

# End-of-turn / end-of-document tokens that chat models emit but do not always declare as eos.
_END_TOKENS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<eos>")


def eos_ids(*sources: Any) -> frozenset[int]:
    """Collect end-of-sequence ids from configs, generation configs and tokenizers.

    Each source may be None or have an `eos_token_id` (an int, a list of ints or None); a
    transformers tokenizer also contributes the known end-of-turn tokens (`<|im_end|>`,
    `<end_of_turn>`, ...) it has as special tokens.
    """
    ids: set[int] = set()
    for src in sources:
        if src is None:
            continue
        eos = getattr(src, "eos_token_id", None)
        if isinstance(eos, int):
            ids.add(eos)
        elif isinstance(eos, Iterable) and not isinstance(eos, str):
            ids.update(int(i) for i in eos)
        special = getattr(src, "all_special_tokens", None)
        if special:
            for name in set(_END_TOKENS) & set(special):
                i = src.convert_tokens_to_ids(name)
                if isinstance(i, int) and i >= 0:
                    ids.add(i)
    return frozenset(ids)


def cache_argument(forward_params: Any) -> str:
    """The name under which this model's `forward` takes (and its output returns) the KV cache.

    transformers >= 5.24 calls it `cache`; `past_key_values` (and Mamba's `cache_params`) still
    work there but warn and are removed in 5.40. Older versions only know the old names. Detected
    from the signature, so neither a deprecation warning nor a removed argument reaches a user.

    >>> cache_argument({"input_ids": None, "cache": None, "use_cache": None})
    'cache'
    >>> cache_argument({"input_ids": None, "past_key_values": None})
    'past_key_values'
    """
    for name in ("cache", "past_key_values", "cache_params"):
        if name in forward_params:
            return name
    return "past_key_values"  # a forward(**kwargs) wrapper: the name every version still accepts


class HFTokenizer:
    """Wrap a transformers tokenizer as the `Tokenizer` protocol (plain lists of ints in and out).

    Args:
        tokenizer: a transformers tokenizer (`AutoTokenizer.from_pretrained(...)`).
        generation_config: optional; its `eos_token_id`s join `eos_token_ids`.
    """

    def __init__(self, tokenizer: Any, generation_config: Any = None):
        self.tok = tokenizer
        self.eos_token_ids = eos_ids(tokenizer, generation_config)
        self.bos_token_id: int | None = tokenizer.bos_token_id
        # Control tokens (<|im_end|>, <|im_start|>, ...): never text, whatever their names read.
        self.special_ids: frozenset[int] = frozenset(
            int(i) for i in (getattr(tokenizer, "all_special_ids", None) or ())) | self.eos_token_ids
        self._texts: list[str] | None = None

    def __len__(self) -> int:
        return len(self.tok)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        """Return the ids of `text`. Only what the tokenizer adds by design is added (Gemma's
        BOS; nothing for SmolLM2)."""
        return list(self.tok.encode(text, add_special_tokens=add_special_tokens))

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Return the text of `ids` (special tokens such as `<|im_end|>` dropped by default)."""
        return self.tok.decode(list(ids), skip_special_tokens=skip_special_tokens)

    @property
    def has_chat_template(self) -> bool:
        """Does the model ship a chat template (instruct models do; base models often not)?"""
        return bool(getattr(self.tok, "chat_template", None))

    def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True) -> list[int]:
        """Render `[{"role": ..., "content": ...}, ...]` with the model's chat template to ids,
        ending with the assistant prompt so the model answers next."""
        if not self.has_chat_template:
            raise ValueError("this tokenizer has no chat template; pass a plain prompt instead")
        ids = self.tok.apply_chat_template(
            messages, add_generation_prompt=add_generation_prompt, tokenize=True, return_dict=False
        )
        if hasattr(ids, "keys"):  # a BatchEncoding, whatever return_dict did
            ids = ids["input_ids"]
        return list(ids)

    def token_texts(self) -> list[str]:
        """Return each token's own decoded text, indexed by id (cached; ~0.1 s for 49k tokens).

        A byte-level token that is part of a multi-byte character decodes to U+FFFD. Used to match
        text-level rules (DRY sequence breakers, stop strings) at the token level, and as labels;
        special tokens keep their names here (`output_texts` has them as "").
        """
        if self._texts is None:
            decode = self.tok.decode
            self._texts = [decode([i], skip_special_tokens=False) for i in range(len(self.tok))]
        return self._texts

    def output_texts(self) -> list[str]:
        """Each token's text as part of generated output: `token_texts()` with every special
        token (`special_ids`: EOS, `<|im_start|>`, ...) as "" (they are control, not text)."""
        return [("" if i in self.special_ids else t) for i, t in enumerate(self.token_texts())]


class HFRuntime:
    """Run a transformers causal LM step by step with a batched KV cache (the `Runtime` protocol).

    Args:
        model: a transformers `...ForCausalLM` (put in eval mode here).
        tokenizer: optional `HFTokenizer` (or a raw transformers tokenizer, which gets wrapped),
            kept as `.tokenizer` for convenience; the runtime itself never uses it.
        keep_hidden: also keep `last_hidden` [B, H], the last layer's hidden state at the last
            position (for contrastive search). Off by default: it costs `output_hidden_states`.
        pad_token_id: id written into padding slots; any valid id works (they are masked out).

    Attributes:
        vocab_size: V, the width of the logits (can be larger than the tokenizer's vocabulary).
        eos_token_ids: ids that end a row, from the model config, generation config and tokenizer.
        max_context: the model's maximum positions (`max_position_embeddings`), or None. The loop
            must stop a row before its prompt + output reaches it.
    """

    def __init__(self, model: Any, tokenizer: Any = None, *, keep_hidden: bool = False, pad_token_id: int = 0):
        self.model = model.eval()
        if tokenizer is not None and not isinstance(tokenizer, HFTokenizer):
            tokenizer = HFTokenizer(tokenizer, getattr(model, "generation_config", None))
        self.tokenizer = tokenizer
        config = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
        self.vocab_size: int = int(config.vocab_size)
        self.max_context: int | None = getattr(config, "max_position_embeddings", None)
        self.eos_token_ids: frozenset[int] = eos_ids(
            config, getattr(model, "generation_config", None)
        ) | (tokenizer.eos_token_ids if tokenizer is not None else frozenset())
        self.keep_hidden = keep_hidden
        self.pad_token_id = pad_token_id
        self.device = next(model.parameters()).device
        params = inspect.signature(model.forward).parameters
        self._takes_positions = "position_ids" in params
        self._takes_keep = "logits_to_keep" in params
        self._cache_arg = cache_argument(params)
        self.last_hidden: Tensor | None = None  # [B, H] when keep_hidden
        self.reset()

    # -- state -----------------------------------------------------------------------------------

    def reset(self) -> None:
        """Drop the cache and the batch (frees the memory; `prefill` starts a new batch)."""
        self._cache: Any = None
        self._mask: Tensor | None = None       # [B, T] int64, 0 = left padding
        self._next_pos: Tensor | None = None   # [B] int64, position of the next token per row
        self.last_hidden = None

    @property
    def rows(self) -> int:
        """B, the number of rows in the current batch (0 before `prefill`)."""
        return 0 if self._mask is None else self._mask.shape[0]

    @property
    def lengths(self) -> Tensor:
        """[B] int64: the number of real (unpadded) tokens in each row's context so far."""
        if self._next_pos is None:
            return torch.zeros(0, dtype=torch.long)
        return self._next_pos.clone()

    # -- the three protocol methods ----------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, prompts: list[list[int]]) -> Tensor:
        """Start a batch from `prompts` (one id list per row); return last-position logits.

        Args:
            prompts: B lists of token ids, each non-empty; lengths may differ (left-padded here).

        Returns:
            [B, V] float32 logits for the token after each prompt.
        """
        if not prompts or any(len(p) == 0 for p in prompts):
            raise ValueError("prefill needs at least one prompt, each with at least one token (e.g. BOS)")
        lens = [len(p) for p in prompts]
        T = max(lens)
        if self.max_context is not None and T > self.max_context:
            raise ValueError(f"prompt has {T} tokens; the model's max_context is {self.max_context}")
        B = len(prompts)
        ids = torch.full((B, T), self.pad_token_id, dtype=torch.long)        # [B, T]
        mask = torch.zeros((B, T), dtype=torch.long)                         # [B, T]
        for row, p in enumerate(prompts):
            ids[row, T - len(p):] = torch.as_tensor(p, dtype=torch.long)
            mask[row, T - len(p):] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        # Positions count real tokens only, so a padded row matches the same prompt run alone.
        positions = (mask.cumsum(-1) - 1).clamp(min=0)                         # [B, T]
        self.reset()
        logits, self._cache = self._forward(ids, mask, positions, cache=None)
        self._mask = mask
        self._next_pos = positions[:, -1] + 1                                  # [B]
        return logits

    @torch.no_grad()
    def decode(self, tokens: Tensor) -> Tensor:
        """Feed one token per row through the cache; return the next logits.

        Args:
            tokens: [B] int64, the token just chosen for each row (B == `rows`).

        Returns:
            [B, V] float32 logits.
        """
        if self._mask is None:
            raise RuntimeError("decode() before prefill()")
        tokens = torch.as_tensor(tokens, dtype=torch.long, device=self.device).reshape(-1)
        if tokens.shape[0] != self.rows:
            raise ValueError(f"decode got {tokens.shape[0]} tokens for {self.rows} rows; call select() first")
        self._mask = torch.cat([self._mask, self._mask.new_ones(self.rows, 1)], dim=1)   # [B, T+1]
        logits, self._cache = self._forward(tokens[:, None], self._mask, self._next_pos[:, None], self._cache)
        self._next_pos = self._next_pos + 1
        return logits

    @torch.no_grad()
    def select(self, index: Tensor) -> None:
        """Keep batch rows `index`, in that order: shrink, reorder or repeat.

        Args:
            index: [B'] int64 row indices into the current batch; repeats allowed
                (`[0, 0, 1]` forks row 0 into two rows), `[]` empties the batch.

        All cache layers are re-indexed with `index_select` on the batch dim (transformers'
        `Cache.reorder_cache`, which unlike `batch_select_indices` is implemented by every layer
        type, including sliding-window and linear-attention ones).
        """
        if self._mask is None:
            raise RuntimeError("select() before prefill()")
        index = torch.as_tensor(index, dtype=torch.long, device=self.device).reshape(-1)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.rows):
            raise IndexError(f"select index out of range for {self.rows} rows: {index.tolist()}")
        if hasattr(self._cache, "reorder_cache"):
            self._cache.reorder_cache(index)
        else:  # legacy tuple-of-tuples cache
            self._cache = tuple(tuple(t.index_select(0, index) for t in layer) for layer in self._cache)
        self._mask = self._mask.index_select(0, index)
        self._next_pos = self._next_pos.index_select(0, index)
        if self.last_hidden is not None:
            self.last_hidden = self.last_hidden.index_select(0, index)
        self._trim()

    # -- the engine's methods: rows join and rewind while the batch runs ------------------------------

    @torch.no_grad()
    def join(self, prompts: list[list[int]]) -> Tensor:
        """Prefill `prompts` as new rows appended after the running ones; return their logits.

        The new rows are prefilled on their own (left-padded among themselves), then spliced into
        the running cache: whichever part is shorter in time is padded on the left with masked
        columns, so every row keeps exactly the positions it would have alone. With no running
        rows this is `prefill`.

        Returns:
            [len(prompts), V] float32 logits for the token after each new prompt.
        """
        if self.rows == 0:
            return self.prefill(prompts)
        old_cache, old_mask, old_pos, old_hidden = self._cache, self._mask, self._next_pos, self.last_hidden
        logits = self.prefill(prompts)
        new_cache, new_mask = self._cache, self._mask
        T = max(old_mask.shape[1], new_mask.shape[1])
        self._cache = _splice(old_cache, new_cache, old_mask.shape[1], new_mask.shape[1], T)
        self._mask = torch.cat([_pad_left(old_mask, T), _pad_left(new_mask, T)])
        self._next_pos = torch.cat([old_pos, self._next_pos])
        if old_hidden is not None and self.last_hidden is not None:
            self.last_hidden = torch.cat([old_hidden, self.last_hidden])
        self._trim()
        return logits

    @torch.no_grad()
    def truncate(self, drop: Tensor) -> None:
        """Forget the last `drop[i]` cached tokens of row i ([B] int64; 0 = keep the row as is).

        A row's kept entries move right by `drop[i]` columns and the freed columns on the left
        become masked padding, so the batch stays one rectangular cache and no row is
        re-prefilled. The caller feeds each rewound row its last kept token next (`decode`).
        """
        drop = torch.as_tensor(drop, dtype=torch.long, device=self.device).reshape(-1)
        if drop.shape[0] != self.rows:
            raise ValueError(f"truncate got {drop.shape[0]} counts for {self.rows} rows")
        rows = drop.nonzero().view(-1)
        if rows.numel() == 0:
            return
        d = drop[rows]
        if bool((d > self._mask[rows].sum(-1)).any()):
            raise ValueError("truncate: a row has fewer cached tokens than it drops")
        T = self._mask.shape[1]
        src = (torch.arange(T, device=self.device)[None, :] - d[:, None])        # [r, T]
        valid = src >= 0
        src = src.clamp(min=0)
        self._mask[rows] = self._mask[rows].gather(1, src) * valid
        for layer in _layers(self._cache):
            for t in layer:
                part = t[rows]                                                   # [r, H, T, D]
                idx = src[:, None, :, None].expand(-1, part.shape[1], -1, part.shape[3])
                t[rows] = part.gather(2, idx)
        self._next_pos[rows] -= d
        self._trim()

    def _trim(self) -> None:
        """Drop the left columns that are padding in every row (rows that left, rewinds, joins),
        so attention never works on them. Only full-attention caches (else: kept as they are)."""
        if self._mask is None or self._mask.shape[0] == 0:
            return
        c = int(self._mask.any(0).int().argmax()) if bool(self._mask.any()) else 0
        if c == 0:
            return
        try:
            layers = _layers(self._cache)
        except TypeError:
            return
        if isinstance(self._cache, tuple):
            self._cache = tuple(tuple(t[:, :, c:] for t in layer) for layer in layers)
        else:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[:, :, c:], layer.values[:, :, c:]
        self._mask = self._mask[:, c:]

    def hidden(self) -> Tensor:
        """[B, H] the last layer's hidden state at each row's last fed position (needs keep_hidden)."""
        if self.last_hidden is None:
            raise RuntimeError("hidden() needs keep_hidden=True before the rows were fed")
        return self.last_hidden

    @torch.no_grad()
    def peek(self, prompts: list[list[int]]) -> Tensor:
        """Last-position logits [B, V] float32 of `prompts`, without touching the running batch
        (no cache is kept: the playground's inspect step runs between engine steps)."""
        ids, mask = _left_pad(prompts, self.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        kw = dict(input_ids=ids, attention_mask=mask, use_cache=False)
        if self._takes_positions:
            kw["position_ids"] = (mask.cumsum(-1) - 1).clamp(min=0)
        if self._takes_keep:
            kw["logits_to_keep"] = 1
        return self.model(**kw).logits[:, -1, :].float()

    @torch.no_grad()
    def context_hidden(self, prompts: list[list[int]]) -> tuple[Tensor, Tensor]:
        """Last-layer hidden states of every position of `prompts`, left-padded, without touching
        the running batch: ([B, T, H] float32, bool mask [B, T])."""
        ids, mask = _left_pad(prompts, self.pad_token_id)
        ids, mask = ids.to(self.device), mask.to(self.device)
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                         output_hidden_states=True, use_cache=False)
        return out.hidden_states[-1].float(), mask.bool()

    # -- internals ---------------------------------------------------------------------------------

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor, cache: Any) -> tuple[Tensor, Any]:
        kwargs: dict[str, Any] = dict(input_ids=ids, attention_mask=mask, use_cache=True)
        kwargs[self._cache_arg] = cache
        if self._takes_positions:
            kwargs["position_ids"] = positions
        if self._takes_keep:
            kwargs["logits_to_keep"] = 1
        if self.keep_hidden:
            kwargs["output_hidden_states"] = True
        out = self.model(**kwargs)
        if self.keep_hidden:
            self.last_hidden = out.hidden_states[-1][:, -1, :].float()        # [B, H]
        # fp32 logits whatever the model dtype: the samplers do their arithmetic on them. Under
        # no_grad (not inference_mode) so the caller may modify them in place.
        return out.logits[:, -1, :].float(), getattr(out, self._cache_arg)    # [B, V]


def _left_pad(prompts: list[list[int]], pad: int) -> tuple[Tensor, Tensor]:
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), pad, dtype=torch.long)
    mask = torch.zeros((len(prompts), T), dtype=torch.long)
    for row, p in enumerate(prompts):
        ids[row, T - len(p):] = torch.as_tensor(p, dtype=torch.long)
        mask[row, T - len(p):] = 1
    return ids, mask


def _pad_left(x: Tensor, T: int, dim: int = 1) -> Tensor:
    """`x` with zero columns added on the left of `dim` up to length T (masked padding)."""
    n = T - x.shape[dim]
    if n == 0:
        return x
    shape = list(x.shape)
    shape[dim] = n
    return torch.cat([x.new_zeros(shape), x], dim=dim)


def _layers(cache: Any) -> list[list[Tensor]]:
    """Each layer's [keys, values] tensors [B, H, T, D] (a DynamicCache, or the legacy tuples)."""
    if isinstance(cache, tuple):
        return [list(layer) for layer in cache]
    layers = getattr(cache, "layers", None)
    if layers is None or any(getattr(l, "is_sliding", False) or not hasattr(l, "keys") for l in layers):
        raise TypeError(f"rows can only join or rewind a full-attention cache, not {type(cache).__name__}")
    return [[l.keys, l.values] for l in layers]


def _splice(old: Any, new: Any, t_old: int, t_new: int, T: int) -> Any:
    """One cache from two: rows of `old` then rows of `new`, both left-padded to T in time."""
    if isinstance(old, tuple):
        return tuple(tuple(torch.cat([_pad_left(a, T, 2), _pad_left(b, T, 2)]) for a, b in zip(la, lb))
                     for la, lb in zip(old, new))
    _layers(old), _layers(new)  # (checks the layer types)
    for lo, ln in zip(old.layers, new.layers):
        lo.keys = torch.cat([_pad_left(lo.keys, T, 2), _pad_left(ln.keys, T, 2)])
        lo.values = torch.cat([_pad_left(lo.values, T, 2), _pad_left(ln.values, T, 2)])
    return old
