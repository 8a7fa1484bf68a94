"""Beam sampling written from the algorithm, one beam and one candidate at a time (a test oracle).

No vectorisation, no KV cache, no runtime: `logp(sequence)` gives the next-token log-probs of a
whole sequence, recomputed from scratch every time. The algorithm (transformers' `_beam_search`
with `do_sample=True`, in the vectorised form of transformers #35802):

1. Running beams start as W copies of the prompt with scores [0, -1e9, ...] (only the first is live).
2. Each step, every running beam b scores every token t: `s_b + process(logp(seq_b))[t]`, where
   `process` is the logits processors on the log-probs (here: divide by the temperature, then keep
   the top k). K = max(2, 1 + #eos) · W continuations are drawn without replacement from the
   softmax of those W·V scores (`torch.multinomial`), then ordered best first (`order="score"`,
   as transformers 4.x and >= 5.24; 5.0-5.23 kept the draw order, `order="draw"`).
3. A continuation ends with EOS or at `max_tokens`. Only the first W may enter the finished pool,
   scored `s / generated_len ** length_penalty`; the pool keeps the best W. Nothing enters once the
   pool is full and `early_stopping is True`, or once improvement became impossible (4).
4. The next running beams are the best W continuations that did not end (ended ones sink by -1e9).
   Improvement stays possible while the best running score / L ** length_penalty beats the worst
   finished score (L = max_tokens for `early_stopping="never"` with a positive penalty, else the
   current length).
5. Stop when improvement is impossible, when the pool is full and `early_stopping is True`, or when
   all K continuations ended.

Scores are kept as float32 tensors, as in the vectorised code, so that the softmax the draw sees
is the same.
"""

from __future__ import annotations

from typing import Callable

import torch

NEG = -1.0e9


def process(lp: torch.Tensor, temperature: float, top_k: int) -> torch.Tensor:
    """Temperature, then top-k masking, on one row of log-probs [V] (transformers' warpers)."""
    x = lp / temperature
    if top_k:
        x = x.masked_fill(x < x.topk(top_k).values[-1], float("-inf"))
    return x


def beam_sample(logp: Callable[[list[int]], torch.Tensor], prompt: list[int], *, beams: int,
                eos: set[int], max_tokens: int, generator: torch.Generator, temperature: float = 1.0,
                top_k: int = 0, length_penalty: float = 1.0, early_stopping: bool | str = False,
                order: str = "score") -> list[tuple[list[int], float]]:
    """Return the finished pool, best first: (generated tokens, length-penalised score) pairs."""
    W, K = beams, max(2, 1 + len(eos)) * beams
    running = [(torch.tensor(0.0 if b == 0 else NEG), []) for b in range(W)]
    pool: list[tuple[float, list[int]]] = []
    improvable = True
    for step in range(1, max_tokens + 1):
        rows = [process(logp(prompt + seq), temperature, top_k) + s for s, seq in running]
        total = torch.cat(rows)                                             # [W * V]
        V = rows[0].shape[0]
        drawn = torch.multinomial(total.softmax(-1), K, generator=generator).tolist()
        cands = [(total[i], running[i // V][1] + [i % V]) for i in drawn]
        if order == "score":
            cands.sort(key=lambda c: -float(c[0]))                          # stable
        ends = [step >= max_tokens or seq[-1] in eos for _, seq in cands]
        if improvable and not (len(pool) >= W and early_stopping is True):
            pool += [(float(s) / step ** length_penalty, seq)
                     for (s, seq), end in zip(cands[:W], ends[:W]) if end]
            pool = sorted(pool, key=lambda h: -h[0])[:W]
        sunk = [(s + (NEG if end else 0.0), seq) for (s, seq), end in zip(cands, ends)]
        running = sorted(sunk, key=lambda c: -float(c[0]))[:W]
        L = max_tokens if (early_stopping == "never" and length_penalty > 0) else step
        worst = min(h[0] for h in pool) if len(pool) >= W else NEG
        improvable = improvable and float(running[0][0]) / L ** length_penalty > worst
        if not improvable or (len(pool) >= W and early_stopping is True) or all(ends):
            break
    return [(seq, score) for score, seq in pool]
