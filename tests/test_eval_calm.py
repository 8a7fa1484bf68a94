"""temperance.eval.calm: CALM's batch sampler measured exactly-in-expectation, against simulation."""

import math

import numpy as np
import pytest
import torch

from eval_helpers import tiny_runtime
from temperance.eval import calm, data, score
from temperance.implicit import temper_many


def _stats(p, y, order, N, M, seed=0):
    return calm.calm_position_stats(torch.tensor([p]), torch.tensor([y]), order, N, M,
                                    torch.Generator().manual_seed(seed))


def test_n1_is_a_plain_draw():
    p = [0.5, 0.3, 0.2]
    a, c = _stats(p, 0, 2, 1, 4000)                      # one draw: the fallback keeps it
    assert abs(a[0] - 0.5) < 4 * math.sqrt(0.25 / 4000)
    assert abs(c[0] - 0.38) < 0.03                      # sum p^2 = .25 + .09 + .04


def test_large_n_approaches_softmax_temperature():
    p = np.array([0.5, 0.3, 0.2])
    target = p ** 2 / (p ** 2).sum()                    # T = 1/2
    a, c = _stats(list(p), 0, 2, 2000, 40)
    assert a[0] == pytest.approx(target[0], abs=0.01)
    assert c[0] == pytest.approx((target ** 2).sum(), abs=0.01)


def test_matches_the_implicit_batch_sampler():
    """Our per-batch output distribution, averaged, is what temper_many(method='batch') draws."""
    p = np.array([0.4, 0.25, 0.2, 0.1, 0.05])
    rng = np.random.default_rng(5)
    draws = temper_many(lambda k: rng.choice(5, size=k, p=p), 1 / 3, 3000, method="batch", batch_size=10,
                        vectorized=True, seed=1)
    freq = np.bincount([d.outcome for d in draws], minlength=5) / 3000
    for y in (0, 3):
        a, _ = _stats(list(p), y, 3, 10, 1500, seed=y)
        assert a[0] == pytest.approx(freq[y], abs=4 * math.sqrt(freq[y] * (1 - freq[y]) / 3000) + 0.01)


def test_run_calm_on_a_tiny_model(tmp_path):
    rt = tiny_runtime()
    ws = score.make_windows(rt.tokenizer, data.heldout_text("project"), 24, 48)
    res = calm.run_calm(rt, ws, batches=4, out=tmp_path, temperatures=(1.0, 0.5), calm_n=(1, 20))
    assert (tmp_path / "calm.json").is_file() and res["positions"] == 48
    pts = res["points"]
    assert [(p["method"], p["T"], p["N"]) for p in pts][:2] == [("softmax", 1.0, None), ("softmax", 0.5, None)]
    assert len(pts) == 2 + 2 * 2
    logits = torch.cat([score.forward_logits(rt.model, w) for w in ws]).double()
    y = torch.cat([torch.tensor(w[1:]) for w in ws])
    q = torch.softmax(logits / 0.5, -1)
    assert pts[1]["accuracy_n1"] == pytest.approx(q.gather(1, y.view(-1, 1)).mean().item(), rel=1e-6)
    assert pts[1]["collision_n1"] == pytest.approx((q * q).sum(-1).mean().item(), rel=1e-6)
    assert all(0 <= p["accuracy_gm"] <= 1 and p["accuracy_n1_ci"][0] <= p["accuracy_n1"] + 1e-12 for p in pts)
    assert res["trend"]["verdict"] in ("reproduced", "partly reproduced", "not reproduced")
    with pytest.raises(ValueError, match="batches"):
        calm.run_calm(rt, ws, batches=1)
