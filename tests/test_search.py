"""Beam search family and contrastive search: oracles on a toy LM, agreement with transformers."""

from __future__ import annotations

import argparse
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from beam_reference import beam_sample
from conftest_runtime_helpers import tiny_llama
from temperance.errors import TemperanceError
from temperance.params import SamplingParams
from temperance.search import (BeamSettings, add_search_flags, beam_search, beam_step,
                               contrastive_search, run_search_from_args)

torch.set_num_threads(1)


class ToyLM:
    """Deterministic tiny LM: logits = table[previous token, last token] over V tokens (EOS = 0).

    It keeps each row's history, so a wrong `select` (the loop's reorder) changes the logits.
    """

    def __init__(self, V: int = 5, seed: int = 0, scale: float = 2.0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(V, V, V, generator=g) * scale
        self.eos_token_ids = frozenset({0})
        self.vocab_size = V
        self.hist: list[list[int]] = []

    def logp(self, seq: list[int]) -> torch.Tensor:
        return self.table[seq[-2] if len(seq) > 1 else 0, seq[-1]].log_softmax(-1)

    def _logits(self):
        return torch.stack([self.table[h[-2] if len(h) > 1 else 0, h[-1]] for h in self.hist])

    def prefill(self, prompts):
        self.hist = [list(p) for p in prompts]
        return self._logits()

    def decode(self, tokens):
        assert len(tokens) == len(self.hist)
        for h, t in zip(self.hist, tokens.tolist()):
            h.append(t)
        return self._logits()

    def select(self, index):
        self.hist = [list(self.hist[i]) for i in torch.as_tensor(index).tolist()]


def exhaustive(lm: ToyLM, prompt: list[int], max_tokens: int, lp: float, n: int):
    """Every finished sequence (EOS-ended, or max_tokens long) with its HF score; best n."""
    V, out = lm.vocab_size, []

    def walk(seq, total):
        lps = lm.logp(prompt + seq)
        for t in range(V):
            s, tot = seq + [t], total + float(lps[t])
            if t == 0 or len(s) == max_tokens:
                out.append((tot / len(s) ** lp, s))
            else:
                walk(s, tot)
    walk([], 0.0)
    out.sort(key=lambda x: -x[0])
    return out[:n]


def greedy(lm: ToyLM, prompt: list[int], max_tokens: int) -> list[int]:
    seq: list[int] = []
    while len(seq) < max_tokens:
        t = int(lm.logp(prompt + seq).argmax())
        seq.append(t)
        if t == 0:
            break
    return seq


# -- the pure step --------------------------------------------------------------------------------

def test_beam_step_topk_and_parents():
    lp = torch.tensor([[[-1.0, -2.0, -3.0], [-0.5, -4.0, -0.1]]])     # [N=1, W=2, V=3]
    run = torch.tensor([[0.0, -1.0]])
    sc, tk, pa = beam_step(lp, run, 3)
    assert tk.tolist() == [[0, 2, 0]] and pa.tolist() == [[0, 1, 1]]
    assert torch.allclose(sc, torch.tensor([[-1.0, -1.1, -1.5]]))


# -- oracles on the toy LM --------------------------------------------------------------------------

@pytest.mark.parametrize("V,L,seed", [(5, 3, 0), (3, 4, 1), (4, 3, 2)])
@pytest.mark.parametrize("lp", [0.0, 0.5, 1.0, 2.0, -1.0])
def test_beam_equals_exhaustive_search(V, L, seed, lp):
    """Width V**(L-1) keeps every prefix, and early_stopping='never' is an exact bound: beam search
    must then return exactly the best sequences under the same length penalty."""
    lm = ToyLM(V, seed)
    W = V ** (L - 1)
    want = exhaustive(lm, [1, 2], L, lp, 3)
    got = beam_search(lm, [[1, 2]], BeamSettings(beams=W, length_penalty=lp, early_stopping="never",
                                                 num_return_sequences=3), max_tokens=L)[0]
    assert [h.tokens for h in got] == [s for _, s in want]
    assert [h.score for h in got] == pytest.approx([sc for sc, _ in want], abs=1e-5)


@pytest.mark.parametrize("seed", range(6))
def test_width_one_is_greedy(seed):
    lm = ToyLM(5, seed, scale=1.0)
    for prompt in ([1], [3, 4], [2, 2, 1]):
        got = beam_search(lm, [prompt], BeamSettings(beams=1, early_stopping=True), max_tokens=6)[0]
        assert got[0].tokens == greedy(lm, prompt, 6)


def test_batched_requests_match_single_and_per_request_settings():
    lm = ToyLM(5, 3)
    s1 = BeamSettings(beams=3, length_penalty=0.5, num_return_sequences=2)
    s2 = BeamSettings(beams=2, length_penalty=2.0, early_stopping=True)
    both = beam_search(lm, [[1], [2, 3]], [s1, s2], max_tokens=5)
    assert both[0] == beam_search(lm, [[1]], s1, max_tokens=5)[0]
    assert both[1] == beam_search(lm, [[2, 3]], s2, max_tokens=5)[0]
    assert len(both[0]) == 2 and len(both[1]) == 1


def test_diverse_zero_penalty_equals_independent_groups():
    lm = ToyLM(5, 4)
    plain = beam_search(lm, [[1]], BeamSettings(beams=2, num_return_sequences=2), max_tokens=5)[0]
    div = beam_search(lm, [[1]], BeamSettings(beams=6, groups=3, diversity_penalty=0.0,
                                               num_return_sequences=6), max_tokens=5)[0]
    for g in range(3):
        mine = [(h.tokens, h.score) for h in div if h.group == g]
        assert mine == [(h.tokens, h.score) for h in plain]


def test_diverse_large_penalty_makes_first_tokens_distinct():
    lm = ToyLM(5, 4)
    div = beam_search(lm, [[1]], BeamSettings(beams=3, groups=3, diversity_penalty=100.0,
                                               num_return_sequences=3), max_tokens=4)[0]
    assert len({h.tokens[0] for h in div}) == 3


@pytest.mark.parametrize("seed", range(4))
def test_constrained_outputs_contain_forced_phrases(seed):
    lm = ToyLM(6, seed)
    cons = (((3, 4),), ((5,), (2, 2)))   # phrase "3 4", and either "5" or "2 2"
    res = beam_search(lm, [[1]], BeamSettings(beams=4, num_return_sequences=4, constraints=cons),
                      max_tokens=8)[0]
    assert 1 <= len(res) <= 4
    for h in res:
        s = " " + " ".join(map(str, h.tokens)) + " "
        assert " 3 4 " in s and (" 5 " in s or " 2 2 " in s), h.tokens


@pytest.mark.parametrize("seed", range(4))
def test_constrained_without_constraints_equals_beam_search(seed, monkeypatch):
    import temperance.search as search
    lm = ToyLM(6, seed)
    s = BeamSettings(beams=3, num_return_sequences=3, length_penalty=1.5)
    want = beam_search(lm, [[1], [2, 4]], s, max_tokens=6)
    monkeypatch.setattr(search, "_banked", lambda s: True)   # the banked step, with no constraints
    assert beam_search(lm, [[1], [2, 4]], s, max_tokens=6) == want


def test_disjunctive_satisfied_by_one_alternative():
    lm = ToyLM(6, 1)
    res = beam_search(lm, [[1]], BeamSettings(beams=3, constraints=(((4,), (5,)),)), max_tokens=6)[0]
    assert (4 in res[0].tokens) or (5 in res[0].tokens)


def test_settings_validation():
    lm = ToyLM()
    for bad in (BeamSettings(beams=0), BeamSettings(beams=2, num_return_sequences=3),
                BeamSettings(beams=4, groups=3), BeamSettings(early_stopping="sometimes")):
        with pytest.raises(TemperanceError):
            beam_search(lm, [[1]], bad, max_tokens=3)


def test_beam_sampling_seeded_and_uses_chain():
    lm = ToyLM(5, 0)
    s = BeamSettings(beams=3, sample=True, num_return_sequences=3)
    a = beam_search(lm, [[1]], s, SamplingParams(seed=5, temperature=1.0), max_tokens=5)[0]
    b = beam_search(lm, [[1]], s, SamplingParams(seed=5, temperature=1.0), max_tokens=5)[0]
    assert a == b
    # top_k = 1 in the chain leaves one token per beam: only the greedy path survives.
    c = beam_search(lm, [[1]], BeamSettings(beams=1, sample=True, early_stopping=True),
                    SamplingParams(seed=1, top_k=1, temperature=1.0), max_tokens=5)[0]
    assert c[0].tokens == greedy(lm, [1], 5)


# -- agreement with transformers ------------------------------------------------------------------

@pytest.fixture(scope="module")
def llama():
    from temperance.runtime.hf import HFRuntime
    models = {eos: tiny_llama(eos_token_id=eos) for eos in (43, 161)}
    return {eos: (m, HFRuntime(m)) for eos, m in models.items()}


def _hf_beams(model, prompts, *, beams, lp, es, nrs, max_new):
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    out = model.generate(ids, attention_mask=mask, num_beams=beams, do_sample=False,
                         max_new_tokens=max_new, length_penalty=lp, early_stopping=es,
                         num_return_sequences=nrs, pad_token_id=0,
                         eos_token_id=model.config.eos_token_id)
    return out[:, T:].tolist()


@pytest.mark.parametrize("eos", [43, 161])
@pytest.mark.parametrize("beams,nrs", [(1, 1), (2, 2), (4, 1), (4, 3)])
@pytest.mark.parametrize("lp", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("es", [True, False])
def test_matches_transformers_beam_search(llama, eos, beams, nrs, lp, es):
    model, rt = llama[eos]
    g = torch.Generator().manual_seed(beams * 7 + int(lp * 10))
    prompts = [torch.randint(3, 300, (n,), generator=g).tolist() for n in (5, 3)]
    want = _hf_beams(model, prompts, beams=beams, lp=lp, es=es, nrs=nrs, max_new=10)
    got = beam_search(rt, prompts, BeamSettings(beams=beams, length_penalty=lp, early_stopping=es,
                                                num_return_sequences=nrs), max_tokens=10)
    flat = [h.tokens for hyps in got for h in hyps]

    def upto_eos(t):  # HF pads finished rows (with EOS, or with pad for num_beams=1 = greedy)
        return t[:t.index(eos) + 1] if eos in t else t
    assert [upto_eos(t) for t in flat] == [upto_eos(t) for t in want]
    assert all(t == upto_eos(t) for t in flat)


def _upto(t: list[int], eos: int) -> list[int]:
    return t[:t.index(eos) + 1] if eos in t else t


def _llama_logp(model):
    """Next-token log-probs of a whole sequence, recomputed without a cache (the oracle's view)."""
    @torch.no_grad()
    def logp(seq):
        return model(torch.tensor([seq])).logits[0, -1].float().log_softmax(-1)
    return logp


@pytest.mark.parametrize("V,beams,top_k,temperature", [(8, 2, 0, 1.0), (12, 3, 6, 0.7), (12, 2, 5, 1.5)])
@pytest.mark.parametrize("lp,es", [(1.0, False), (0.5, True), (2.0, "never"), (-1.0, False)])
@pytest.mark.parametrize("seed", range(4))
def test_beam_sampling_matches_reference_on_toy_lm(V, beams, top_k, temperature, lp, es, seed):
    """Ours against the from-the-algorithm oracle (tests/beam_reference.py) with the same seeded
    generator: same tokens, same scores, the whole pool. EOS (token 0) is drawn often here, so
    early finishing, the pool and the stopping rules are all exercised."""
    lm = ToyLM(V, seed, scale=1.0)
    gen = torch.Generator().manual_seed(100 + seed)
    want = beam_sample(lm.logp, [1, 2], beams=beams, eos={0}, max_tokens=6, generator=gen,
                       temperature=temperature, top_k=top_k, length_penalty=lp, early_stopping=es)
    got = beam_search(lm, [[1, 2]], BeamSettings(beams=beams, sample=True, length_penalty=lp,
                                                 early_stopping=es, num_return_sequences=beams),
                      SamplingParams(seed=100 + seed, top_k=top_k, temperature=temperature),
                      max_tokens=6)[0]
    assert [h.tokens for h in got] == [t for t, _ in want]
    assert [h.score for h in got] == pytest.approx([s for _, s in want], abs=1e-5)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("beams", [2, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_beam_sampling_matches_reference(llama, seed, beams, temperature):
    """Ours (KV cache, chain, vectorised step) against the oracle (no cache, plain loops) on the
    tiny Llama with the chain of transformers' warpers (top-k 20, temperature)."""
    model, rt = llama[161]
    p = [5, 6, 7, 8, 9]
    want = beam_sample(_llama_logp(model), p, beams=beams, eos={161}, max_tokens=8,
                       generator=torch.Generator().manual_seed(seed), temperature=temperature, top_k=20)
    got = beam_search(rt, [p], BeamSettings(beams=beams, sample=True, num_return_sequences=beams),
                      SamplingParams(seed=seed, top_k=20, temperature=temperature), max_tokens=8)[0]
    assert [h.tokens for h in got] == [t for t, _ in want]
    assert [h.score for h in got] == pytest.approx([s for _, s in want], abs=1e-4)


def _transformers_orders_sampled_beams() -> str:
    """How the installed transformers (>= 5.0, as pyproject.toml requires) orders the K sampled
    continuations: "score" from 5.24 on (as the classic 4.x `_beam_sample` did), "draw" before."""
    import transformers
    from packaging.version import Version
    return "score" if Version(transformers.__version__) >= Version("5.24") else "draw"


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("beams", [2, 4])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_beam_sampling_transformers_agrees_with_reference(llama, seed, beams, temperature):
    """transformers' beam sampling (global RNG) equals the oracle run with the same seed and the
    ordering that transformers version uses; where that is the algorithm's ("score"), ours
    equals transformers token for token as well. HF draws with the global RNG; ours with a
    generator seeded by the request seed: the same stream, so the same draws."""
    model, rt = llama[161]
    p = [5, 6, 7, 8, 9]
    torch.manual_seed(seed)
    out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, 5, dtype=torch.long),
                         num_beams=beams, do_sample=True, top_k=20, top_p=1.0, temperature=temperature,
                         max_new_tokens=8, pad_token_id=0, eos_token_id=161, num_return_sequences=beams)
    hf = [_upto(t, 161) for t in out[:, 5:].tolist()]
    order = _transformers_orders_sampled_beams()
    ref = beam_sample(_llama_logp(model), p, beams=beams, eos={161}, max_tokens=8, order=order,
                      generator=torch.Generator().manual_seed(seed), temperature=temperature, top_k=20)
    assert hf == [t for t, _ in ref]
    if order == "score":
        got = beam_search(rt, [p], BeamSettings(beams=beams, sample=True, num_return_sequences=beams),
                          SamplingParams(seed=seed, top_k=20, temperature=temperature), max_tokens=8)[0]
        assert [h.tokens for h in got] == hf


# -- contrastive ----------------------------------------------------------------------------------

def test_contrastive_search_not_in_transformers_core():
    """transformers 5 moved contrastive search to Hub remote code (offline: unavailable), so we
    check properties instead of agreement."""
    from transformers.generation import utils
    assert "contrastive" in str(utils.GENERATION_MODES_MAPPING).lower()
    assert "transformers-community/contrastive-search" in utils.GENERATION_MODES_MAPPING.values()


def test_contrastive_alpha_zero_is_greedy(llama):
    model, rt = llama[43]
    prompts = [[5, 6, 7, 8], [9, 10]]
    got = contrastive_search(rt, prompts, alpha=0.0, top_k=4, max_tokens=8)
    for p, h in zip(prompts, got):
        out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                             do_sample=False, max_new_tokens=8, pad_token_id=0, eos_token_id=43)
        assert h.tokens == out[0, len(p):].tolist()


def test_contrastive_deterministic_and_differs_from_greedy(llama):
    _, rt = llama[43]
    prompts = [[5, 6, 7, 8], [9, 10]]
    a = contrastive_search(rt, prompts, alpha=0.6, top_k=4, max_tokens=12)
    b = contrastive_search(rt, prompts, alpha=0.6, top_k=4, max_tokens=12)
    assert [h.tokens for h in a] == [h.tokens for h in b]
    g = contrastive_search(rt, prompts, alpha=0.0, top_k=4, max_tokens=12)
    assert [h.tokens for h in a] != [h.tokens for h in g]
    # batched equals one at a time (left padding is masked out of the context)
    assert contrastive_search(rt, [prompts[1]], alpha=0.6, top_k=4, max_tokens=12)[0].tokens == a[1].tokens
    assert rt.keep_hidden is False


@pytest.mark.parametrize("prompt,alpha", [([5, 6, 7, 8], 0.6), ([11, 12], 0.8), ([20, 30, 40], 0.4)])
def test_contrastive_matches_reference_recomputation(llama, prompt, alpha):
    """Recompute contrastive search from scratch (full forward passes, no cache) and compare."""
    model, rt = llama[43]
    k, n = 3, 14
    got = contrastive_search(rt, [prompt], alpha=alpha, top_k=k, max_tokens=n)[0].tokens
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            out = model(torch.tensor([seq]), output_hidden_states=True)
            ctx = out.hidden_states[-1][0]
            p, cand = out.logits[0, -1].softmax(-1).topk(k)
            best, tok = None, None
            for pv, c in zip(p.tolist(), cand.tolist()):
                h = model(torch.tensor([seq + [c]]), output_hidden_states=True).hidden_states[-1][0, -1]
                pen = torch.nn.functional.cosine_similarity(h[None], ctx, dim=-1).max().item()
                s = (1 - alpha) * pv - alpha * pen
                if best is None or s > best:
                    best, tok = s, c
            seq.append(tok)
            if tok == 43:
                break
    assert got == seq[len(prompt):]


# -- command line ---------------------------------------------------------------------------------

def test_cli_flags_roundtrip():
    p = argparse.ArgumentParser()
    p.add_argument("--max-tokens", type=int, default=5)
    p.add_argument("--top-k", dest="top_k", type=int, default=None)
    add_search_flags(p)
    a = p.parse_args(["--beams", "3", "--early-stopping", "never", "--num-return-sequences", "2"])
    assert a.beams == 3 and a.early_stopping == "never" and a.num_return_sequences == 2
    lm = ToyLM()
    out = run_search_from_args(a, lm, [[1]], SamplingParams())
    assert len(out) == 1 and len(out[0]) == 2
    assert all(h.finish_reason in ("stop", "length") and h.tokens for h in out[0])
    with pytest.raises(SystemExit):
        p.parse_args(["--early-stopping", "maybe"])


@pytest.mark.slow
def test_smollm2_beam_smoke():
    from conftest_runtime_helpers import smollm2_runtime
    rt = smollm2_runtime()
    res = beam_search(rt, ["The capital of France is"], BeamSettings(beams=4), max_tokens=16)[0]
    assert res[0].text.strip() and len(res[0].tokens) <= 16
