"""temperance.eval.score: exact per-position statistics, checked by hand, in float64 and by sampling."""

import dataclasses
import math

import numpy as np
import pytest
import torch

from temperance import Batch, Chain, SamplingParams
from temperance.eval import grid, score
from temperance.ops import _native
from temperance.ops.mirostat import mirostat, mirostat_update
from temperance.ops.xtc import xtc

TF = grid.TEMPERATURE_FIRST


def P(**kw):
    return SamplingParams(samplers=TF, **kw)


def test_hand_computed_min_p():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).log()
    s = score.score_block(logits, torch.tensor([1]), P(min_p=0.5))   # keeps p >= 0.25: {0, 1}
    q = np.array([0.625, 0.375])
    assert s["accuracy"].item() == pytest.approx(0.375)
    assert s["collision"].item() == pytest.approx((q ** 2).sum())
    assert s["brier"].item() == pytest.approx(0.75 - (q ** 2).sum())
    assert s["kept_size"].item() == 2 and s["miss"].item() == 0
    assert s["entropy"].item() == pytest.approx(-(q * np.log2(q)).sum())
    s = score.score_block(logits, torch.tensor([3]), P(min_p=0.5))
    assert s["accuracy"].item() == 0 and s["miss"].item() == 1 and s["brier"].item() < 0


@pytest.mark.parametrize("native", [True, False], ids=["native", "torch"])
def test_matches_float64_reference_on_random_rows(native):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 300, generator=g) * 3
    logits[::5, 7] = float("-inf")          # masked entries in the raw logits too
    y = torch.randint(0, 300, (64,), generator=g)
    y[::5] = 7                               # ... some of them the true token
    for params in (P(), P(top_p=0.9, temperature=1.5), P(top_k=7, temperature=0.7),
                   P(top_n_sigma=1.0, temperature=3.0), SamplingParams(min_p=0.1, temperature=2.0),
                   P(min_p=0.05, temperature=30.0), P(temperature=1e4)):
        dense = Chain(params)(logits, Batch(params, size=64))
        q = torch.softmax(dense.double(), -1)
        with _native.use(native):
            s = score.score_block(logits, y, params)
        assert torch.allclose(s["accuracy"], q.gather(1, y.view(-1, 1)).view(-1), rtol=1e-9, atol=1e-12)
        assert torch.allclose(s["collision"], (q * q).sum(-1), rtol=1e-9, atol=1e-12)
        ent = -torch.where(q > 0, q * q.log(), 0.0).sum(-1) / math.log(2)
        assert torch.allclose(s["entropy"], ent, rtol=1e-9, atol=1e-9)
        assert torch.equal(s["kept_size"], torch.isfinite(dense).sum(-1).double())
        assert torch.equal(s["_mask"], torch.isfinite(dense))
        assert torch.equal(s["miss"].bool(), ~torch.isfinite(dense.gather(1, y.view(-1, 1))).view(-1))


def test_greedy_is_a_point_mass_on_the_first_maximum():
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    s = score.score_block(logits, torch.tensor([1, 2]), P(temperature=0))
    assert s["accuracy"].tolist() == [1.0, 0.0] and s["collision"].tolist() == [1.0, 1.0]
    assert s["kept_size"].tolist() == [1.0, 1.0] and s["entropy"].tolist() == [0.0, 0.0]


def test_exact_accuracy_and_collision_match_sampling():
    """q(y) and sum q^2 are what the chain's own draws do (4000 seeds, 4-sigma tolerance)."""
    g = torch.Generator().manual_seed(1)
    row = torch.randn(1, 40, generator=g) * 2
    params = P(min_p=0.05, temperature=1.5)
    n = 4000
    picked = Chain(params).sample(row.expand(n, 40), Batch(params, size=n, seed=torch.arange(n))).tokens
    y = int(picked[0])
    s = score.score_block(row, torch.tensor([y]), params)
    qy, coll = s["accuracy"].item(), s["collision"].item()
    assert abs((picked == y).float().mean().item() - qy) < 4 * math.sqrt(qy * (1 - qy) / n)
    pairs = (picked[: n // 2] == picked[n // 2:]).float().mean().item()
    assert abs(pairs - coll) < 4 * math.sqrt(coll * (1 - coll) / (n // 2))


def test_xtc_is_the_exact_mixture():
    p = torch.tensor([[0.4, 0.3, 0.2, 0.06, 0.04]])
    params = P(xtc_probability=0.3, xtc_threshold=0.1)
    s = score.score_block(p.log(), torch.tensor([2]), params)
    on = torch.softmax(xtc(p.log(), xtc_probability=1.0, xtc_threshold=0.1).double(), -1)  # keeps {2, 3, 4}
    q = 0.7 * p.double() + 0.3 * on
    assert s["accuracy"].item() == pytest.approx(q[0, 2].item())
    assert s["collision"].item() == pytest.approx((q * q).sum().item())
    assert s["kept_size"].item() == 5
    # and the chain's own coin over 6000 seeds draws from that mixture
    n = 6000
    t = Chain(params).sample(p.log().expand(n, 5), Batch(params, size=n, seed=torch.arange(n))).tokens
    freq = torch.bincount(t, minlength=5).double() / n
    assert 0.5 * (freq - q[0]).abs().sum().item() < 0.02


def test_mirostat_follows_the_reference_path():
    g = torch.Generator().manual_seed(2)
    windows = [[int(x) for x in torch.randint(0, 30, (9,), generator=g)],
               [int(x) for x in torch.randint(0, 30, (6,), generator=g)]]
    logits = torch.randn(13, 30, generator=g) * 2
    params = SamplingParams(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.5)
    got = score.score_config(params, logits, windows)
    row = 0
    for w, rec in zip(windows, got):       # by hand: mu from 2 tau, updated with the true token
        mu, acc = torch.tensor([6.0]), 0.0
        for t in range(len(w) - 1):
            l = logits[row:row + 1]
            q = torch.softmax(mirostat(l, mu=mu, mirostat=2).double(), -1)[0]
            y = w[t + 1]
            acc += q[y].item()
            lp = math.log(q[y]) if q[y] > 0 else torch.log_softmax(l.double(), -1)[0, y].item()
            mu = mirostat_update(mu, torch.tensor([lp]), mirostat_tau=3.0, mirostat_eta=0.5)
            row += 1
        assert rec["accuracy"] == pytest.approx(acc, rel=1e-5) and rec["n"] == len(w) - 1


def test_penalties_see_the_true_prefix():
    g = torch.Generator().manual_seed(3)
    windows = [[1, 2, 1, 2, 1, 2, 3], [4, 4, 4, 4]]
    logits = torch.randn(9, 8, generator=g)
    params = P(repetition_penalty=1.5)
    got = score.score_config(params, logits, windows, block=4)
    row, acc = 0, []
    for w in windows:
        a = 0.0
        for t in range(len(w) - 1):
            q = torch.softmax(Chain(params)(logits[row:row + 1], Batch(params, history=[w[: t + 1]])).double(), -1)
            a += q[0, w[t + 1]].item()
            row += 1
        acc.append(a)
    assert [r["accuracy"] for r in got] == pytest.approx(acc)
    plain = score.score_config(P(), logits, windows)
    assert plain[1]["accuracy"] != pytest.approx(got[1]["accuracy"])   # the penalty did something


def test_top_n_sigma_kept_set_is_temperature_invariant_min_p_is_not():
    g = torch.Generator().manual_seed(4)
    windows = [list(range(33)), list(range(20))]
    logits = torch.randn(51, 500, generator=g) * 4
    fp = lambda p: [w["fingerprint"] for w in score.score_config(p, logits, windows, block=16)]  # noqa: E731
    assert fp(P(top_n_sigma=1.0, temperature=0.1)) == fp(P(top_n_sigma=1.0, temperature=1.0)) \
        == fp(P(top_n_sigma=1.0, temperature=10.0))
    assert fp(P(min_p=0.1, temperature=0.5)) != fp(P(min_p=0.1, temperature=3.0))
    assert fp(P(min_p=0.1, temperature=1.0)) != fp(P(top_n_sigma=1.0, temperature=1.0))


def test_windows_and_sums():
    class Tok:
        def encode(self, text):
            return [ord(c) % 50 for c in text]
    ws = score.make_windows(Tok(), ["a" * 30, "b" * 5, "c" * 100], window=16, positions=40)
    # "a"*30: one full window, its 13-position tail is under min_len; "b"*5 too short; "c"*100: one
    # full window, then the cut at 40 positions leaves 8
    assert [len(w) - 1 for w in ws] == [16, 16, 8]
    assert ws[0] == [ord("a") % 50] * 17
    logits = torch.randn(40, 50)
    recs = score.score_config(P(top_k=3), logits, ws, block=7)
    assert [r["n"] for r in recs] == [16, 16, 8] and all(r["kept_size"] == 3 * r["n"] for r in recs)
    with pytest.raises(Exception, match="positions"):
        score.score_config(P(), logits[:5], ws)


def test_dataclasses_replace_keeps_params_valid():
    # the XTC mixture replaces xtc_probability by 0 and 1: both must stay valid SamplingParams
    p = P(xtc_probability=0.5, min_p=0.05)
    assert dataclasses.replace(p, xtc_probability=0.0).xtc_probability == 0.0
    assert dataclasses.replace(p, xtc_probability=1.0).active("xtc")
