"""Generation-based evaluation: k samples per prompt and configuration, then the metrics per prompt.

One *cell* is (model, task, configuration, seed block). It runs every prompt of the task in one
batched `temperance.generate.generate` call with ``n = k`` samples per prompt and
``raw_logprobs=True`` (for the NLL under the raw model), then scores each prompt's group of k
samples with `temperance.eval.metrics.group_metrics`.

**Common random numbers.** Sample s of prompt i in seed block b has the seed
``h(base_seed, b, id_i) + s`` (``id_i`` a hash of the prompt text, ``h`` = sha256), the same in
every configuration. The draw is Gumbel-max with noise keyed by (seed, step, token), so two
configurations that produce the same distribution at a step pick the same token, and differences
between configurations are paired rather than buried in sampling noise. (One seed shared by every
row would make all rows draw with the same noise: distinct seeds per (prompt, sample) matter.)

>>> seed_for(0, 0, "abc") == seed_for(0, 0, "abc") != seed_for(0, 1, "abc")
True
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from typing import Any, Callable, Sequence

import torch

from ..generate import encode_prompts, generate
from ..params import SamplingParams
from .data import Task
from .metrics import group_metrics

__all__ = ["seed_for", "run_generate_cell", "SEED_SPACE"]

SEED_SPACE = 2**62   # generate adds the sample index; stay below 2^63


def seed_for(base_seed: int, block: int, item_id: str) -> int:
    """The seed of sample 0 of one prompt in one seed block (sample s adds s)."""
    h = hashlib.sha256(f"{base_seed}:{block}:{item_id}".encode()).digest()
    return int.from_bytes(h[:8], "little") % SEED_SPACE


def run_generate_cell(runtime: Any, task: Task, params: SamplingParams, *, samples: int,
                      max_tokens: int, chat: bool, seed_block: int, base_seed: int = 0,
                      embed: Callable | None = None, embeddings: bool = True,
                      keep_samples: int | None = None, judge: Any = None) -> list[dict]:
    """Generate and score one cell; one record per prompt: its id, metrics and samples.

    ``judge``: a second runtime; each sample's mean per-token NLL under it becomes ``judge_nll``."""
    items = list(task.items)
    per_prompt = [dataclasses.replace(params, seed=seed_for(base_seed, seed_block, it.id)) for it in items]
    texts = [[""] * samples for _ in items]
    nll_sum = [[0.0] * samples for _ in items]
    ntok = [[0] * samples for _ in items]
    finish = [[None] * samples for _ in items]
    for e in generate(runtime, [it.prompt for it in items], per_prompt, n=samples,
                      max_tokens=max_tokens, chat=chat, raw_logprobs=True):
        texts[e.request][e.sample] += e.text
        if e.raw_logprob is not None and math.isfinite(e.raw_logprob):
            nll_sum[e.request][e.sample] -= e.raw_logprob
        ntok[e.request][e.sample] += 1
        if e.finish_reason is not None:
            finish[e.request][e.sample] = e.finish_reason
    out = []
    for i, it in enumerate(items):
        nll = [s / max(1, n) for s, n in zip(nll_sum[i], ntok[i])]
        correct = [it.correct(t) for t in texts[i]] if it.verifiable else None
        m = group_metrics(texts[i], correct=correct, nll=nll, embed=embed, embeddings=embeddings)
        m["tokens"] = sum(ntok[i]) / samples
        if judge is not None:
            jn = [judge_nll(judge, it.prompt, t, chat) for t in texts[i]]
            finite = [x for x in jn if math.isfinite(x)]
            m["judge_nll"] = sum(finite) / len(finite) if finite else math.nan
        keep = samples if keep_samples is None else min(keep_samples, samples)
        out.append({"id": it.id, "prompt": it.prompt, "metrics": m,
                    "samples": [{"text": texts[i][s], "tokens": ntok[i][s], "nll": nll[s],
                                 "finish": finish[i][s],
                                 **({"correct": correct[s]} if correct is not None else {})}
                                for s in range(keep)]})
    return out


@torch.no_grad()
def judge_nll(judge: Any, prompt: str, text: str, chat: bool) -> float:
    """Mean per-token NLL (nats) of `text` after `prompt` under the `judge` runtime's model, with
    its own tokenizer. The prompt is put in the judge's chat template when `chat` and the judge has
    one; a base model (no template, e.g. Gemma-3-270m) reads the plain prompt. NaN for an empty
    text."""
    tok = judge.tokenizer
    ctx = encode_prompts(tok, [prompt], chat=chat and getattr(tok, "has_chat_template", True))[0]
    cont = tok.encode(text, add_special_tokens=False) if text else []
    if not cont:
        return math.nan
    ids = torch.as_tensor([ctx + cont], dtype=torch.long)
    logits = judge.model(input_ids=ids).logits[0, len(ctx) - 1:-1].float()  # the continuation's rows
    lp = logits.gather(1, torch.as_tensor(cont).view(-1, 1)).view(-1) - logits.logsumexp(-1)
    return float(-lp.double().mean())
