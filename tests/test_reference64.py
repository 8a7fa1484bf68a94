"""Float64 reference implementations, written independently of the library (numpy and Python
loops), compared with the batched torch code on random inputs.

Boundary policy: the library works on float32 logits (the top-p / typical masses in float64). Rows
whose decision lies within a small relative margin of a threshold are fp32 boundary cases; they
are counted and skipped (and must stay rare), every other row must agree exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from temperance import Batch, Chain, SamplingParams, ops
from temperance.ops import _native
from temperance.states import MirostatState

INF = math.inf


def _paths():
    """Both implementations of the mass cuts: the native kernels (where they build) and torch."""
    return pytest.mark.parametrize("native", [
        pytest.param(True, marks=pytest.mark.skipif(_native.lib() is None, reason="no native build")),
        False])


def _lm_like(rng: np.random.Generator, B: int, V: int) -> torch.Tensor:
    """Zipf-shaped logits with noise, some ties and some masked entries, like an LM's."""
    ranks = np.arange(1, V + 1)
    rows = []
    for _ in range(B):
        s = rng.uniform(0.6, 2.0)
        z = -s * np.log(ranks) + rng.normal(0, rng.uniform(0.1, 1.5), V)
        z = z[rng.permutation(V)] * rng.uniform(0.5, 2.0)
        if rng.random() < 0.2:
            z = np.round(z, 1)  # ties
        if rng.random() < 0.2:
            z[rng.random(V) < 0.3] = -np.inf
            z[rng.integers(V)] = 0.0
        rows.append(z)
    return torch.tensor(np.array(rows), dtype=torch.float32)


def _probs64(row: np.ndarray) -> np.ndarray:
    fin = np.isfinite(row)
    e = np.where(fin, np.exp(np.where(fin, row, 0.0) - row[fin].max()), 0.0)
    return e / e.sum()


def _desc_order(row: np.ndarray) -> list[int]:
    return sorted(range(len(row)), key=lambda i: (-row[i], i))  # value desc, then token id


def _kept(y: torch.Tensor, i: int) -> set[int]:
    return set(torch.isfinite(y[i]).nonzero().view(-1).tolist())


# -- top-p ------------------------------------------------------------------------------------------

def ref_top_p(row: np.ndarray, p: float):
    """Kept set, and the relative distance of p to the nearest cumulative mass (boundary margin)."""
    q = _probs64(row)
    order = [i for i in _desc_order(row) if np.isfinite(row[i])]
    if p == 0:
        return {order[0]}, 1.0
    cum, keep = 0.0, []
    for i in order:
        keep.append(i)
        before, cum = cum, cum + q[i]
        if cum >= p:
            return set(keep), min(abs(cum - p), abs(p - before)) / p
    return set(keep), 1.0


@_paths()
@pytest.mark.parametrize("V", [7, 100, 3000, 20000])
def test_top_p_against_reference(V, native):
    rng = np.random.default_rng(V)
    B = 600 if V < 3000 else 150 if V < 10000 else 40
    x = _lm_like(rng, B, V)
    p = rng.choice([0, 0.05, 0.3, 0.5, 0.8, 0.9, 0.95] + ([0.99, 0.999] if V < 1000 else []), B)
    p32 = torch.tensor(p, dtype=torch.float32)  # knobs are float32 per row
    with _native.use(native):
        y = ops.top_p(x, top_p=p32)
        c = Chain().candidates(x, Batch([SamplingParams(top_p=float(v)) for v in p32.tolist()]))
    yc = c.dense()
    skipped = 0
    for i in range(B):
        keep, margin = ref_top_p(x[i].double().numpy(), float(p32[i]))
        if margin < 1e-6:  # "reaches p" is within float32 rounding of p (~3e-8 relative)
            skipped += 1
            continue
        assert _kept(y, i) == keep, (i, float(p32[i]))
        if margin > 1e-5:
            assert _kept(yc, i) == keep, (i, float(p32[i]))
    assert skipped <= max(1, B // 100), skipped


@_paths()
@pytest.mark.parametrize("rounding", ["nearest", "next"])
def test_top_p_dense_agrees_with_float64_even_at_the_boundary(native, rounding):
    # p = the float32 nearest to the mass of n tokens: that mass reaches p within float32 rounding,
    # so exactly n tokens are kept; p = the float32 above that one (a gap < 6e-8): n + 1.
    rng = np.random.default_rng(5)
    B, V = 200, 5000
    x = _lm_like(rng, B, V)
    x[~torch.isfinite(x)] = -30.0
    ps, want = [], []
    for i in range(B):
        row = x[i].double().numpy()
        q = _probs64(row)
        cum = np.cumsum(q[_desc_order(row)])
        n = int(rng.integers(1, V // 4))
        p32 = np.float32(cum[n - 1])
        if rounding == "next":
            p32 = np.nextafter(p32, np.float32(2))
            if not (cum[n - 1] < p32 <= cum[n]):
                continue
        else:  # the rule in float64: the first mass >= the midpoint below p32 (clear by 1% of it)
            below = np.nextafter(p32, np.float32(0))
            mid, gap = (float(p32) + float(below)) / 2, 0.01 * float(p32 - below)
            if not (cum[n - 1] >= mid + gap and (n == 1 or cum[n - 2] < mid - gap)):
                continue
        if p32 >= 1:
            continue
        ps.append(float(p32)), want.append((i, n + (rounding == "next")))
    idx = [i for i, _ in want]
    with _native.use(native):
        y = ops.top_p(x[idx], top_p=torch.tensor(ps))
    assert len(want) > 150
    assert torch.isfinite(y).sum(-1).tolist() == [n for _, n in want]


# -- typical ------------------------------------------------------------------------------------------

def ref_typical(row: np.ndarray, tau: float):
    """Kept set and a margin: the mass cut's relative distance to tau, and the score gap (nats)
    between the last kept token and the next one (float32 scores could swap them)."""
    q = _probs64(row)
    fin = [i for i in range(len(row)) if np.isfinite(row[i])]
    H = -sum(q[i] * math.log(q[i]) for i in fin if q[i] > 0)
    score = {i: abs(-math.log(q[i]) - H) if q[i] > 0 else INF for i in fin}
    order = sorted(fin, key=lambda i: (score[i], i))
    cum, keep = 0.0, []
    for n, i in enumerate(order, 1):
        keep.append(i)
        before, cum = cum, cum + q[i]
        if cum >= tau:
            margin = min(abs(cum - tau), abs(tau - before)) / tau
            if n < len(order):
                a, b = order[n - 1], order[n]
                gap = score[b] - score[a]
                margin = min(margin, 1.0 if gap == 0 and row[a] == row[b] else gap * 10)
            return set(keep), margin
    return set(keep), 1.0


@_paths()
@pytest.mark.parametrize("V", [5, 60, 800, 20000])
def test_typical_against_reference(V, native):
    rng = np.random.default_rng(100 + V)
    B = 400 if V < 10000 else 30
    x = _lm_like(rng, B, V)
    tau = torch.tensor(rng.choice([0.05, 0.2, 0.5, 0.9, 0.95], B), dtype=torch.float32)
    with _native.use(native):
        y = ops.typical_p(x, typical_p=tau)
    skipped = 0
    for i in range(B):
        keep, margin = ref_typical(x[i].double().numpy(), float(tau[i]))
        if margin < 1e-5:  # float32 probabilities / scores
            skipped += 1
            continue
        assert _kept(y, i) == keep, (i, float(tau[i]))
    assert skipped <= B // 20, skipped


# -- the simple threshold rules -------------------------------------------------------------------------

def ref_threshold_rules(row: np.ndarray, name: str, v: float):
    """(kept set, margin) for min_p, top_n_sigma, top_a, epsilon, eta, tfs."""
    fin = np.isfinite(row)
    q = _probs64(row)
    top = _desc_order(row)[0]
    if name == "min_p":
        t, val = q.max() * v, q
    elif name == "top_a":
        t, val = v * q.max() ** 2, q
    elif name == "epsilon":
        t, val = v, q
    elif name == "eta":
        H = -sum(pi * math.log(pi) for pi in q if pi > 0)
        t, val = min(v, math.sqrt(v) * math.exp(-H)), q
    elif name == "top_n_sigma":
        f = row[fin]
        t, val = f.max() - v * f.std(), np.where(fin, row, -INF)  # numpy std: population (ddof=0)
    elif name == "tfs":  # the original rule over the candidates (llama.cpp's loop)
        order = [j for j in _desc_order(row) if fin[j]]
        s = q[order]
        if len(s) <= 2:
            return set(order), 1.0
        d2 = np.abs(np.diff(np.diff(s)))
        w = d2 / d2.sum() if d2.sum() > 1e-6 else np.full(len(d2), 1 / len(d2))
        W = np.cumsum(w)
        cut = next((i for i in range(1, len(W)) if W[i] > v), len(s))
        margin = min([abs(x - v) for x in W] + [abs(d2.sum() - 1e-6) / 1e-6, 1.0])
        return set(order[:cut]), margin
    keep = {i for i in range(len(row)) if fin[i] and val[i] >= t} | {top}
    margin = min([abs(val[i] - t) / max(abs(t), 1e-30) for i in range(len(row)) if fin[i]] + [1.0])
    return keep, margin


@pytest.mark.parametrize("name, op, knob, values", [
    ("min_p", ops.min_p, "min_p", [0.01, 0.05, 0.1, 0.3, 0.9]),
    ("top_n_sigma", ops.top_n_sigma, "top_n_sigma", [0.3, 1.0, 2.0]),
    ("top_a", ops.top_a, "top_a", [0.05, 0.2, 0.9]),
    ("epsilon", ops.epsilon, "epsilon_cutoff", [3e-4, 0.02, 0.1]),
    ("eta", ops.eta, "eta_cutoff", [3e-4, 4e-3, 0.05]),
    ("tfs", ops.tfs, "tfs_z", [0.5, 0.9, 0.95]),
])
def test_threshold_rules_against_reference(name, op, knob, values):
    rng = np.random.default_rng(len(name))
    B, V = 300, 50
    x = _lm_like(rng, B, V)
    v = torch.tensor(rng.choice(values, B), dtype=torch.float32)
    y = op(x, **{knob: v})
    skipped = 0
    for i in range(B):
        keep, margin = ref_threshold_rules(x[i].double().numpy(), name, float(v[i]))
        if margin < 1e-4:
            skipped += 1
            continue
        assert _kept(y, i) == keep, (name, i, float(v[i]))
    assert skipped <= B // 20, skipped


# -- DRY ------------------------------------------------------------------------------------------

def ref_dry(h: list[int], V: int, mult: float, base: float, allowed: int, last_n: int,
            breakers: list[tuple[int, ...]]) -> np.ndarray:
    """llama.cpp's DRY rule, naively: O(L^2) suffix matching plus the breaker-derived rep_limit."""
    pen = np.zeros(V)
    if mult == 0 or last_n == 0:
        return pen
    n = len(h) if last_n < 0 else min(last_n, len(h))
    w = h[len(h) - n:]  # the window
    if n <= allowed:
        return pen
    # rep_limit: scan back from the newest token for a breaker head whose tail follows it
    rep_limit = n
    for i in range(n):  # i = tokens after the candidate head
        head = w[n - 1 - i]
        tails = [b[1:] for b in breakers if b[0] == head and len(b) - 1 <= i
                 and all(w[n - i + q] == b[1 + q] for q in range(len(b) - 1))]
        if tails:
            rep_limit = i - max(len(t) for t in tails)
            break
    if rep_limit < allowed:
        return pen
    singles = {b[0] for b in breakers if len(b) == 1}
    best: dict[int, int] = {}
    for j in range(n - 1):  # an earlier position whose suffix matches the window's suffix
        length = 0
        while j - length >= 0 and w[j - length] == w[n - 1 - length]:
            length += 1
        length = min(length, rep_limit)
        if length >= allowed:
            tok = w[j + 1]
            best[tok] = max(best.get(tok, 0), length)
    max_exp = math.floor(88.7228391 / math.log(base)) if base > 1.000001 else None
    for tok, length in best.items():
        if tok in singles:
            continue
        e = length - allowed
        if max_exp is not None:
            e = min(e, max_exp)
        pen[tok] = mult * base ** e
    return pen


def test_dry_against_reference():
    rng = np.random.default_rng(42)
    B, V = 400, 6
    hist, breakers, knobs = [], [], {k: [] for k in ("m", "b", "a", "n")}
    for i in range(B):
        L = int(rng.integers(0, 40))
        alphabet = int(rng.integers(2, V + 1))
        h = rng.integers(0, alphabet, L).tolist()
        if rng.random() < 0.5 and L > 6:  # plant a long repeat
            seg = h[: int(rng.integers(3, L // 2 + 1))]
            h = (h + seg)[-40:]
        hist.append(h)
        br = []
        for _ in range(int(rng.integers(0, 3))):
            br.append(tuple(rng.integers(0, V, int(rng.integers(1, 3))).tolist()))
        breakers.append(br or [(99,)])  # (99,) never occurs: "no breakers" for this row
        knobs["m"].append(float(rng.choice([0.0, 0.8, 1.0, 2.5])))
        knobs["b"].append(float(rng.choice([1.0, 1.1, 1.75, 3.0, 1000.0])))
        knobs["a"].append(int(rng.integers(1, 5)))
        knobs["n"].append(int(rng.choice([-1, 0, 3, 8, 20, 100])))
    x = torch.randn(B, V, generator=torch.Generator().manual_seed(0))
    y = ops.dry(x, history=hist, dry_multiplier=torch.tensor(knobs["m"]),
                dry_base=torch.tensor(knobs["b"]), dry_allowed_length=torch.tensor(knobs["a"]),
                dry_penalty_last_n=torch.tensor(knobs["n"]), dry_sequence_breakers=[[list(b) for b in br] for br in breakers])
    penalised = 0
    for i in range(B):
        pen = ref_dry(hist[i], V, knobs["m"][i], knobs["b"][i], knobs["a"][i], knobs["n"][i], breakers[i])
        want = x[i].double().numpy() - pen
        got = y[i].double().numpy()
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5 * max(1.0, float(np.abs(pen).max())),
                                   err_msg=f"row {i}: h={hist[i]} knobs={[knobs[k][i] for k in 'mban']} br={breakers[i]}")
        penalised += bool(pen.any())
    assert penalised > B // 5  # the test is not vacuous


# -- mirostat ------------------------------------------------------------------------------------

def ref_mirostat_v1_k(row: np.ndarray, mu: float, N: int, m: int = 100) -> float:
    q = _probs64(row)
    s = np.sort(q[q > 0])[::-1][:m]
    num = den = 0.0
    for i in range(len(s) - 1):
        t_i = math.log((i + 2) / (i + 1))
        b_i = math.log(s[i] / s[i + 1])
        num, den = num + t_i * b_i, den + t_i * t_i
    s_hat = num / den
    eps = s_hat - 1
    return (eps * 2**mu / (1 - N ** (-eps))) ** (1 / s_hat)


def test_mirostat_v1_k_against_reference():
    rng = np.random.default_rng(7)
    B, V = 300, 400
    x = _lm_like(rng, B, V)
    x[~torch.isfinite(x)] = -40.0
    mu = torch.tensor(rng.uniform(1, 12, B), dtype=torch.float32)
    y = ops.mirostat(x, mu=mu, mirostat=1)
    skipped = 0
    for i in range(B):
        k = ref_mirostat_v1_k(x[i].double().numpy(), float(mu[i]), V)
        k_int = min(max(int(k), 1), V) if math.isfinite(k) else V
        if abs(k - round(k)) < 1e-4:
            skipped += 1
            continue
        assert len(_kept(y, i)) >= k_int  # top-k keeps k (more only if ... never: exactly k)
        assert len(_kept(y, i)) == k_int, (i, k)
        row = x[i].double().numpy()
        assert _kept(y, i) == set(_desc_order(row)[:k_int])
    assert skipped <= 3


@pytest.mark.parametrize("version", [1, 2])
def test_mirostat_steps_against_reference(version):
    rng = np.random.default_rng(version)
    B, V, steps, tau, eta = 6, 200, 8, 3.0, 0.3
    params = [SamplingParams(mirostat=version, mirostat_tau=tau, mirostat_eta=eta, temperature=0.9, seed=s)
              for s in range(B)]
    chain, batch = Chain(params[0]), Batch(params)
    state = MirostatState(batch)
    mu_ref = np.full(B, 2 * tau)
    for s in range(steps):
        x = _lm_like(rng, B, V)
        x[~torch.isfinite(x)] = -40.0
        xt = x.double().numpy() / 0.9
        dense = chain(x, batch, state)  # uses the state's current mu
        refs = []
        for i in range(B):
            q = _probs64(xt[i])
            order = _desc_order(xt[i])
            if version == 2:
                keep = {j for j in range(V) if -math.log2(q[j]) <= mu_ref[i]} | {order[0]}
                margin = min(abs(-math.log2(q[j]) - mu_ref[i]) for j in range(V))
            else:
                k = ref_mirostat_v1_k(xt[i], mu_ref[i], V)
                k_int = min(max(int(k), 1), V) if math.isfinite(k) else V
                keep = set(order[:k_int])
                margin = abs(k - round(k)) if math.isfinite(k) else 1.0
            refs.append(keep)
            if margin > 1e-4:
                assert _kept(dense, i) == keep, (s, i)
        picked = chain.sample(x, batch, state=state)
        for i in range(B):
            tok = int(picked.tokens[i])
            assert tok in refs[i]
            q = _probs64(xt[i])
            qk = q[tok] / sum(q[j] for j in refs[i])  # renormalised over the kept set
            mu_ref[i] -= eta * (-math.log2(qk) - tau)
        np.testing.assert_allclose(state.mu.double().numpy(), mu_ref, atol=1e-4)
        batch = batch.append(picked.tokens)
    assert not np.allclose(mu_ref, 2 * tau)
