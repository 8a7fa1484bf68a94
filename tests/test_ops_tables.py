"""Hand-computed tables for every op (tiny vectors in, exact kept sets / probabilities out).

Vectors come from shared/reference/algorithms.md (sections 2, 3, 5, 6) and the rules of
shared/spec/decisions.md. Logits are built as ``torch.log`` of exact probabilities (in float64,
then float32) so that boundary cases are exact where a test says so.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from temperance import Batch, Chain, SamplingParams, TemperanceError, ops
from temperance.ops.min_p import threshold as min_p_threshold

INF = math.inf


def L(*p) -> torch.Tensor:
    """Logits [1, V] = log p (float64 log, stored as float32)."""
    return torch.tensor([p], dtype=torch.float64).log().float()


def kept(y: torch.Tensor, row: int = 0) -> list[int]:
    return torch.isfinite(y[row]).nonzero().view(-1).tolist()


def probs(y: torch.Tensor) -> list[float]:
    return torch.softmax(y.double(), -1)[0].tolist()


P5 = (0.5, 0.3, 0.15, 0.04, 0.01)


# -- min-p ---------------------------------------------------------------------------------------

def test_min_p_vector():
    y = ops.min_p(L(*P5), min_p=0.1)
    assert kept(y) == [0, 1, 2]
    assert torch.equal(y[0, :3], L(*P5)[0, :3])  # survivors untouched
    assert kept(ops.min_p(L(*P5), min_p=0.5)) == [0, 1]
    assert kept(ops.min_p(L(*P5), min_p=0.02)) == [0, 1, 2, 3, 4]


def test_min_p_boundary_is_inclusive_exactly():
    # p_max = 2/3.5, token 1 has p = 1/3.5 = 0.5 * p_max exactly: log(2) + log(0.5) == log(1) == 0
    x = torch.log(torch.tensor([[2.0, 1.0, 0.5]]))
    assert min_p_threshold(x, 0.5)[0, 0].item() == x[0, 1].item() == 0.0  # the boundary is exact
    assert kept(ops.min_p(x, min_p=0.5)) == [0, 1]
    assert kept(ops.min_p(torch.log(torch.tensor([[8.0, 4.0, 2.0, 1.0]])), min_p=0.5)) == [0, 1]


def test_min_p_one_keeps_exactly_the_ties_at_the_max():
    assert kept(ops.min_p(torch.tensor([[1.0, 3.0, 3.0, 2.9]]), min_p=1.0)) == [1, 2]


# -- top-n-sigma ----------------------------------------------------------------------------------

def test_top_n_sigma_vectors():
    out = probs(ops.top_n_sigma(L(0.1, 0.2, 0.3, 0.4), top_n_sigma=1.0))
    assert out == pytest.approx([0, 0, 0.428571, 0.571429], abs=1e-6)
    out = probs(ops.top_n_sigma(L(0.1, 0.2, 0.3, 0.4), top_n_sigma=3.0))
    assert out == pytest.approx([0.1, 0.2, 0.3, 0.4], abs=1e-6)


def test_top_n_sigma_population_sigma_over_finite_entries_only():
    # finite logits 0,1,2,3: mean 1.5, population sigma sqrt(1.25) = 1.118 (sample sigma 1.291).
    # n = 1.7: threshold 3 - 1.901 = 1.099 (population) drops token 1; 3 - 2.195 = 0.805 (sample)
    # would keep it. The -inf entries must not enter mean or sigma (or produce NaN).
    x = torch.tensor([[0.0, 1.0, 2.0, 3.0, -INF, -INF]])
    y = ops.top_n_sigma(x, top_n_sigma=1.7)
    assert kept(y) == [2, 3]
    assert not torch.isnan(y).any()
    assert kept(ops.top_n_sigma(x, top_n_sigma=1.8)) == [1, 2, 3]  # 3 - 2.012 = 0.988 <= 1
    from temperance.ops.top_n_sigma import threshold
    assert threshold(x, 1.0)[0, 0].item() == pytest.approx(3 - math.sqrt(1.25), abs=1e-6)


def test_top_n_sigma_threshold_is_the_float64_rule_rounded_up():
    """The threshold is the smallest float32 >= max − n·σ computed in float64, so a logit just
    below the exact threshold is removed. (A float32 threshold that rounded down onto such a logit
    kept it at T = 1 but not at T = 0.1: top-nσ's kept set then depended on T at one position in
    8,192 of SmolLM2's.)"""
    from temperance.ops.top_n_sigma import threshold

    def exact(x):
        xd = x.double()
        return (xd.max() - 1.5 * xd.std(unbiased=False)).item()

    inf = torch.tensor(math.inf)
    for seed in range(20):
        x = torch.randn(1, 4000, generator=torch.Generator().manual_seed(seed)) * 3
        for _ in range(3):  # place x[7] at the largest float32 below the exact threshold
            t = torch.tensor(exact(x), dtype=torch.float64)
            r = t.float()
            x[0, 7] = r if r.double() < t else torch.nextafter(r, -inf)
        if x[0, 7].double() < exact(x):
            break
    t = exact(x)
    assert x[0, 7].double() < t
    thr = threshold(x, 1.5)
    assert thr.dtype == torch.float32
    assert thr.double().item() >= t > torch.nextafter(thr, -inf).double().item()
    assert not torch.isfinite(ops.top_n_sigma(x, top_n_sigma=1.5))[0, 7]


def test_top_n_sigma_is_temperature_invariant_and_flat_rows_keep_all():
    x = torch.randn(4, 50, generator=torch.Generator().manual_seed(0)) * 3
    sets = [torch.isfinite(ops.top_n_sigma(x / T, top_n_sigma=1.0)) for T in (0.1, 1.0, 10.0)]
    assert torch.equal(sets[0], sets[1]) and torch.equal(sets[1], sets[2])
    assert kept(ops.top_n_sigma(torch.zeros(1, 5), top_n_sigma=1.0)) == [0, 1, 2, 3, 4]
    x = L(*P5)
    assert torch.equal(ops.top_n_sigma(x, top_n_sigma=-1.0), x)  # n <= 0 is off


# -- mirostat -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mu, keep", [(6.0, [0, 1, 2, 3]), (7.0, [0, 1, 2, 3, 4]), (2.0, [0, 1]),
                                      (1.5, [0]), (0.5, [0]), (-3.0, [0])])
def test_mirostat_v2_keeps_surprise_at_most_mu(mu, keep):
    # surprises -log2 p: 1, 1.74, 2.74, 4.64, 6.64; tau = 3 -> mu = 6 keeps {0,1,2,3}
    assert kept(ops.mirostat(L(*P5), mu=mu, mirostat=2)) == keep


def _zipf_k(s: float, mu: float, N: int) -> float:
    eps = s - 1
    if abs(eps) < 1e-12:
        return 2**mu / math.log(N)
    return (eps * 2**mu / (1 - N ** (-eps))) ** (1 / s)


@pytest.mark.parametrize("s", [1.2, 1.5, 2.0])
@pytest.mark.parametrize("mu", [3.0, 6.0, 10.0])
def test_mirostat_v1_k_on_a_zipf_distribution(s, mu):
    # For p_i ∝ i^-s the least-squares fit gives s_hat = s exactly; k = floor(((s-1)·2^mu /
    # (1 - N^-(s-1)))^(1/s)) (llama.cpp, m = 100, N = vocabulary size).
    N = 1000
    i = torch.arange(1, N + 1, dtype=torch.float64)
    x = (-s * torch.log(i)).float().view(1, -1)
    k = _zipf_k(s, mu, N)
    assert abs(k - round(k)) > 1e-3  # keep the hand value away from an integer boundary
    assert kept(ops.mirostat(x, mu=mu, mirostat=1)) == list(range(max(1, int(k))))


def test_mirostat_v1_hand_numbers():
    # s = 1.2, N = 1000: k(mu=3) = 1.883, k(6) = 10.650, k(10) = 107.349 (computed by hand)
    i = torch.arange(1, 1001, dtype=torch.float64)
    x = (-1.2 * torch.log(i)).float().view(1, -1)
    assert [len(kept(ops.mirostat(x, mu=mu, mirostat=1))) for mu in (3.0, 6.0, 10.0)] == [1, 10, 107]
    assert len(kept(ops.mirostat(x, mu=-5.0, mirostat=1))) == 1  # mu < 0: greedy step
    assert len(kept(ops.mirostat(x, mu=60.0, mirostat=1))) == 1000  # clamped to V


def test_mirostat_update_sign_and_value():
    mu = torch.tensor([6.0, 6.0, 6.0])
    # S = -log2 p: p = 0.5 -> 1 bit (< tau 3: mu grows); p = 1/8 -> 3 bits (no change);
    # p = 1/64 -> 6 bits (> tau: mu shrinks)
    lp = torch.tensor([math.log(0.5), math.log(1 / 8), math.log(1 / 64)])
    new = ops.mirostat_update(mu, lp, mirostat_tau=3.0, mirostat_eta=0.1)
    assert new.tolist() == pytest.approx([6.2, 6.0, 5.7], abs=1e-6)
    assert new.dtype == mu.dtype


def test_mirostat_zero_is_an_error_for_the_op():
    with pytest.raises(TemperanceError):
        ops.mirostat(L(*P5), mu=3.0, mirostat=0)


# -- typical --------------------------------------------------------------------------------------

def test_typical_vectors():
    assert kept(ops.typical_p(L(0.97, 0.01, 0.01, 0.01), typical_p=0.5)) == [0]
    assert kept(ops.typical_p(L(0.4, 0.2, 0.2, 0.2), typical_p=0.5)) == [1, 2, 3]


def test_typical_uses_the_inclusive_rule():
    # p = (1/2, 1/4, 1/8, 1/8) exactly; H = 1.75 bits; scores |s - H| (bits) = .75, .25, 1.25, 1.25
    # -> order 1, 0, 2, 3 with cumulative mass .25, .75, .875, 1. tau = .75 is reached (>=) by the
    # second token exactly, so two tokens are kept; the strict llama.cpp rule (>) would keep three.
    x = torch.log(torch.tensor([[4.0, 2.0, 1.0, 1.0]]))
    assert torch.softmax(x, -1)[0].tolist() == [0.5, 0.25, 0.125, 0.125]
    assert kept(ops.typical_p(x, typical_p=0.75)) == [0, 1]
    assert kept(ops.typical_p(x, typical_p=0.7500001)) == [0, 1, 2]
    assert kept(ops.typical_p(x, typical_p=0.25)) == [1]
    # ties in the score: the lower token id comes first
    assert kept(ops.typical_p(x, typical_p=0.8)) == [0, 1, 2]


# -- epsilon / eta --------------------------------------------------------------------------------

def test_epsilon_vectors():
    assert kept(ops.epsilon(L(*P5), epsilon_cutoff=0.02)) == [0, 1, 2, 3]
    assert kept(ops.epsilon(L(*P5), epsilon_cutoff=0.16)) == [0, 1]
    assert kept(ops.epsilon(L(*P5), epsilon_cutoff=0.9)) == [0]  # the top token always stays


def test_eta_vectors():
    # H = 1.16714 nats; eta = min(eps, sqrt(eps)·e^-H)
    p = np.array(P5)
    H = float(-(p * np.log(p)).sum())
    assert H == pytest.approx(1.16714, abs=1e-5)
    assert min(0.02, math.sqrt(0.02) * math.exp(-H)) == 0.02
    assert kept(ops.eta(L(*P5), eta_cutoff=0.02)) == [0, 1, 2, 3]
    # eps = 0.16: eta = 0.4·e^-H = 0.1245 < 0.16, so 0.15 survives (epsilon 0.16 would drop it)
    assert 0.15 > 0.4 * math.exp(-H) > 0.04
    assert kept(ops.eta(L(*P5), eta_cutoff=0.16)) == [0, 1, 2]
    assert kept(ops.eta(L(*P5), eta_cutoff=0.9)) == [0, 1]  # eta = 0.9487·0.3112 = 0.295


# -- TFS, top-a, smoothing, dynatemp ----------------------------------------------------------------

def tfs_reference(p, z):
    """A float64 transcription of the original rule (llama.cpp's loop), token indices kept."""
    order = sorted(range(len(p)), key=lambda j: (-p[j], j))
    q = [p[j] for j in order]
    n = len(q)
    if z >= 1 or n <= 2:
        return sorted(order)
    d = [abs(q[i] - 2 * q[i + 1] + q[i + 2]) for i in range(n - 2)]
    total = sum(d)
    w = [v / total for v in d] if total > 1e-6 else [1 / (n - 2)] * (n - 2)
    last, cum = n, 0.0
    for i, v in enumerate(w):
        cum += v
        if cum > z and i >= 1:
            last = i
            break
    return sorted(order[:last])


# (probabilities, z, kept ids): the linear curve has no curvature, so every d_i counts 1/3
TFS_CASES = [
    ((0.1, 0.15, 0.2, 0.25, 0.3), 0.25, [4]),
    ((0.1, 0.15, 0.2, 0.25, 0.3), 0.75, [3, 4]),
    ((0.1, 0.15, 0.2, 0.25, 0.3), 0.99, [3, 4]),
    (P5, 0.95, [0, 1]),        # d = (.05, .04, .08)/.17 -> W = (.294, .529, 1.0): cut at i = 2
    (P5, 0.5, [0]),            # W_1 = .529 > .5: cut at i = 1
    (P5, 0.6, [0, 1]),
    (P5, 0.25, [0]),           # W_0 > z does not cut (min_keep): token 0 stays
    (P5, 0.0, [0]),
    # d = (0, .05, .13, .01)/.19 -> W = (0, .263, .947, 1.0)
    ((0.4, 0.3, 0.2, 0.05, 0.03, 0.02), 0.5, [0, 1]),
    ((0.4, 0.3, 0.2, 0.05, 0.03, 0.02), 0.95, [0, 1, 2]),
]


@pytest.mark.parametrize("p, z, keep", TFS_CASES)
def test_tfs_hand_vectors_match_the_original_rule(p, z, keep):
    assert tfs_reference(list(p), z) == keep
    assert kept(ops.tfs(torch.tensor([p]).log(), tfs_z=z)) == keep


def test_tfs_ignores_masked_tokens():
    x = torch.tensor([P5]).log()
    padded = torch.cat([x, torch.full((1, 7), float("-inf"))], dim=1)
    assert kept(ops.tfs(padded, tfs_z=0.95)) == kept(ops.tfs(x, tfs_z=0.95)) == [0, 1]


def test_tfs_no_op_cases():
    x = torch.tensor([[1.0, 0.0]])  # V < 3
    assert torch.equal(ops.tfs(x, tfs_z=0.5), x)
    x = torch.tensor([[1.0, 0.0, float("-inf"), float("-inf")]])  # two candidates
    assert torch.equal(ops.tfs(x, tfs_z=0.5), x)
    x = torch.log(torch.tensor([P5]))
    assert torch.equal(ops.tfs(x, tfs_z=1.0), x)
    assert kept(ops.tfs(torch.zeros(1, 6), tfs_z=0.5)) == [0, 1]  # flat: W = (.25, .5, .75, 1)


def test_top_a_vectors():
    assert kept(ops.top_a(L(*P5), top_a=0.2)) == [0, 1, 2]  # 0.2·0.25 = 0.05
    assert kept(ops.top_a(L(*P5), top_a=1.0)) == [0, 1]     # 0.25
    assert kept(ops.top_a(L(*P5), top_a=0.1)) == [0, 1, 2, 3]  # 0.025
    assert kept(ops.top_a(L(0.9, 0.1), top_a=0.2)) == [0]   # 0.162 > 0.1


@pytest.mark.parametrize("curve, expected", [(1.0, [2.0, 1.5, 0.0]), (2.0, [2.0, 1.5, -1.0]),
                                             (3.0, [2.0, 1.5, -2.0])])
def test_smoothing_vectors(curve, expected):
    # l' = l_max - k·f·Δ² + s·f·Δ³, k = (3-c)/2, s = (c-1)/2, Δ = (0, -1, -2), f = 0.5
    y = ops.smoothing(torch.tensor([[2.0, 1.0, 0.0]]), smoothing_factor=0.5, smoothing_curve=curve)
    assert y[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_smoothing_keeps_masked_entries_masked():
    y = ops.smoothing(torch.tensor([[2.0, -INF, 0.0]]), smoothing_factor=0.5)
    assert y[0].tolist() == [2.0, -INF, 0.0]


def _entropy_T(x, T, R, E):
    p = np.exp(x - x.max()); p /= p.sum()
    H = float(-(p * np.log(p)).sum())
    lo, hi = max(0.0, T - R), T + R
    return lo + (hi - lo) * (H / math.log(len(x))) ** E


@pytest.mark.parametrize("T, R, E", [(1.0, 0.5, 1.0), (1.0, 0.5, 2.0), (0.3, 0.5, 1.0),
                                     (2.0, 1.5, 0.5)])
def test_dynatemp_vectors(T, R, E):
    x = np.array([2.0, 1.0, 0.0, -1.0])
    t = _entropy_T(x, T, R, E)
    y = ops.dynatemp(torch.from_numpy(x).float().view(1, -1), temperature=T, dynatemp_range=R,
                     dynatemp_exponent=E)
    assert y[0].tolist() == pytest.approx((x / t).tolist(), rel=1e-5)


def test_dynatemp_reference_value():
    y = ops.dynatemp(torch.tensor([[2.0, 1.0, 0.0, -1.0]]), temperature=1.0, dynatemp_range=0.5)
    assert 2.0 / y[0, 0].item() == pytest.approx(1.1835, abs=1e-4)


def test_dynatemp_zero_entropy_at_zero_t_min_keeps_the_top_token():
    # p = (1, 0, 0) in float32 -> H = 0 -> T_dyn = T_min = max(0, 0.5 - 0.5) = 0 -> greedy row
    y = ops.dynatemp(torch.tensor([[0.0, -200.0, -200.0]]), temperature=0.5, dynatemp_range=0.5)
    assert y[0].tolist() == [0.0, -INF, -INF]


def test_dynatemp_single_candidate_is_left_alone():
    x = torch.tensor([[-INF, 3.0, -INF]])
    assert torch.equal(ops.dynatemp(x, temperature=2.0, dynatemp_range=1.0), x / 2.0)


# -- temperature --------------------------------------------------------------------------------

def test_temperature_divides():
    assert ops.temperature(torch.tensor([[2.0, 1.0, 0.0]]), temperature=0.5)[0].tolist() == [4, 2, 0]
    assert ops.temperature(torch.tensor([[2.0, -INF]]), temperature=100.0)[0].tolist() == [
        pytest.approx(0.02), -INF]


def test_temperature_zero_is_a_point_mass_on_the_first_maximum():
    x = torch.tensor([[2.0, 1.0, -INF], [2.0, 1.0, -INF], [2.0, 1.0, -INF]])
    y = ops.temperature(x, temperature=torch.tensor([0.0, 2.0, 1.0]))
    assert y[0].tolist() == [2.0, -INF, -INF]          # greedy row: every other token removed
    assert y[1].tolist() == [1.0, 0.5, -INF] and torch.equal(y[2], x[2])
    # ties at the maximum: the lowest token id
    assert ops.temperature(torch.tensor([[1.0, 3.0, 3.0, 0.0]]), temperature=0.0)[0].tolist() == [
        -INF, 3.0, -INF, -INF]


@pytest.mark.parametrize("T", [1e-40, 1e-38, 5e-324, 9.99e-6])
def test_temperature_below_the_floor_is_greedy(T):
    # below 1e-5: the limit T -> 0 (greedy), never an overflow (before: 1e-38 on [5, 9] picked id 0
    # in 2000/2000 draws, and all-negative rows became -inf, i.e. token id V and a NaN logprob)
    x = torch.tensor([[5.0, 9.0], [-5.0, -9.0], [-3e38, -3.3e38]])
    assert ops.temperature(x, temperature=T).tolist() == [[-INF, 9.0], [-5.0, -INF], [x[2, 0].item(), -INF]]
    b = Batch(SamplingParams(temperature=T, seed=0), size=3)
    for step in range(50):
        picked = Chain().sample(x, Batch(b.params, step=step))
        assert picked.tokens.tolist() == [1, 0, 0] and picked.logprob.tolist() == [0.0, 0.0, 0.0]


def test_temperature_never_overflows():
    # l / T past float32's range: the row is shifted by its max (the same distribution)
    y = ops.temperature(torch.tensor([[-3e38, -3.2e38, -INF], [3e38, 2e38, 0.0]]), temperature=0.5)
    assert y[0].tolist() == pytest.approx([0.0, -4e37, -INF], rel=1e-6)
    assert y[1].tolist() == pytest.approx([0.0, -2e38, torch.finfo().min], rel=1e-6)  # saturated
    h = ops.temperature(torch.tensor([[60000.0, 1.0]], dtype=torch.float16), temperature=0.5)
    assert h.dtype == torch.float16 and h.tolist() == [[0.0, -65504.0]]  # saturates, no inf


@pytest.mark.parametrize("T", [-1.0, -1e-9, torch.tensor([1.0, -0.5])])
def test_negative_temperature_is_an_error(T):
    with pytest.raises(TemperanceError, match="temperature must be in"):
        ops.temperature(torch.zeros(2, 3), temperature=T)


def test_t100_with_min_p_before_temperature_keeps_min_p_set():
    x = L(*P5)
    b = Batch(SamplingParams(temperature=100.0, min_p=0.1, seed=0), size=1)
    y = Chain()(x, b)  # llama.cpp order: min_p, then temperature
    assert kept(y) == [0, 1, 2]
    assert y[0, :3].tolist() == pytest.approx((x[0, :3] / 100).tolist())
    bv = Batch(SamplingParams(temperature=100.0, min_p=0.1, samplers="vllm", seed=0), size=1)
    assert kept(Chain("vllm")(x, bv)) == [0, 1, 2, 3, 4]  # temperature first: min-p keeps all
    # and the draw never leaves min-p's set, however high T is
    toks = Chain().sample(x.expand(3000, -1), Batch(
        SamplingParams(temperature=100.0, min_p=0.1), size=3000, seed=torch.arange(3000))).tokens
    assert set(toks.tolist()) == {0, 1, 2}


# -- top-k / top-p --------------------------------------------------------------------------------

@pytest.mark.parametrize("k, keep", [(1, [1]), (2, [1, 2]), (3, [1, 2, 3]), (4, [0, 1, 2, 3]),
                                     (5, [0, 1, 2, 3, 4]), (9, [0, 1, 2, 3, 4])])
def test_top_k_keeps_exactly_k_ties_to_lower_ids(k, keep):
    assert kept(ops.top_k(torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.0]]), top_k=k)) == keep


def test_top_k_details():
    assert kept(ops.top_k(torch.tensor([[1.0, 3.0, 2.0, 3.0]]), top_k=2)) == [1, 3]
    assert kept(ops.top_k(torch.tensor([[-INF, -INF, 1.0, 0.5]]), top_k=3)) == [2, 3]
    assert kept(ops.top_k(torch.tensor([[3.0, 3.0]]), top_k=1)) == [0]
    x = L(*P5)
    assert torch.equal(ops.top_k(x, top_k=0), x) and torch.equal(ops.top_k(x, top_k=5), x)


def test_top_k_ties_on_a_large_vocabulary():
    V = 2**15  # the chunked top-k path
    x = torch.zeros(2, V)
    x[0, [700, 20000, 31000]] = 1.0
    y = ops.top_k(x, top_k=6)
    assert kept(y, 0) == [0, 1, 2, 700, 20000, 31000]
    assert kept(y, 1) == [0, 1, 2, 3, 4, 5]


def test_top_p_vector():
    y = ops.top_p(L(0.1, 0.2, 0.3, 0.4), top_p=0.7)
    assert probs(y) == pytest.approx([0, 0, 0.428571, 0.571429], abs=1e-6)


@pytest.mark.parametrize("p, keep", [(0.3, [3]), (0.39, [3]), (0.5, [2, 3]), (0.75, [1, 2, 3]),
                                     (0.95, [0, 1, 2, 3])])
def test_top_p_includes_the_crossing_token(p, keep):
    assert kept(ops.top_p(L(0.1, 0.2, 0.3, 0.4), top_p=p)) == keep


def test_top_p_ties_broken_by_token_id():
    x = torch.zeros(1, 4)  # p = 0.25 each, exactly
    assert kept(ops.top_p(x, top_p=0.5)) == [0, 1]   # reaches 0.5 exactly with two tokens
    assert kept(ops.top_p(x, top_p=0.51)) == [0, 1, 2]
    assert kept(ops.top_p(x, top_p=0.1)) == [0]
    x = torch.tensor([[0.0, 1.0, 0.0, 1.0, 0.0]])
    # p = (.1185, .3222, .1185, .3222, .1185): cumulative 1, 3, 0 -> .7629
    assert kept(ops.top_p(x, top_p=0.7)) == [0, 1, 3]
    assert kept(ops.top_p(x, top_p=0.8)) == [0, 1, 2, 3]
    assert torch.equal(ops.top_p(x, top_p=1.0), x)


# Top-p at an exact boundary: a prefix whose mass reaches p within float32 rounding of p stops
# there. 0.8 as a float32 is 0.800000012 and 0.5 + 0.3 is 0.8 (up to rounding): transformers and
# llama.cpp both keep exactly {0.5, 0.3}; so do we. The other rows are sums that land on p exactly.
TOP_P_BOUNDARY = [
    ((0.3, 0.1, 0.1, 0.5), 0.8, [0, 3]),
    ((0.1, 0.2, 0.3, 0.4), 0.9, [1, 2, 3]),
    ((0.1, 0.2, 0.3, 0.4), 0.7, [2, 3]),
    ((0.7, 0.2, 0.1), 0.9, [0, 1]),
    ((0.4, 0.3, 0.2, 0.1), 0.7, [0, 1]),
    ((0.4, 0.3, 0.2, 0.1), 0.9, [0, 1, 2]),
    ((0.6, 0.3, 0.1), 0.9, [0, 1]),
    ((0.05, 0.15, 0.35, 0.45), 0.8, [2, 3]),
]


@pytest.mark.parametrize("p, top_p, keep", TOP_P_BOUNDARY)
def test_top_p_stops_where_the_mass_reaches_p_within_float32_rounding(p, top_p, keep):
    assert kept(ops.top_p(L(*p), top_p=top_p)) == keep
    c = Chain("top_p").candidates(L(*p), Batch(SamplingParams(top_p=top_p), size=1))
    assert kept(c.dense()) == keep
    # one float32 step above p the prefix no longer reaches it: the next token joins
    up = float(np.nextafter(np.float32(top_p), np.float32(2)))
    assert len(kept(ops.top_p(L(*p), top_p=up))) == len(keep) + 1


@pytest.mark.parametrize("p, top_p, keep", [c for c in TOP_P_BOUNDARY if c[:2] != ((0.3, 0.1, 0.1, 0.5), 0.8)])
def test_top_p_boundary_table_agrees_with_transformers(p, top_p, keep):
    # (the first row is left out: there transformers' float32 cumsum decides by rounding luck; the
    # tie-free rows here are ones where it and a float32 llama.cpp loop agree)
    transformers = pytest.importorskip("transformers")
    y = transformers.TopPLogitsWarper(top_p)(None, L(*p))
    assert kept(y) == keep


def test_top_p_zero_keeps_exactly_the_top_token():
    assert kept(ops.top_p(L(*P5), top_p=0.0)) == [0]
    assert kept(ops.top_p(torch.tensor([[1.0, 3.0, 3.0, 2.0]]), top_p=0.0)) == [1]  # tie: lower id
    assert kept(ops.top_p(torch.tensor([[-INF, 0.5, -INF]]), top_p=0)) == [1]
    x = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 0.0]])
    y = ops.top_p(x, top_p=torch.tensor([0.0, 1.0]))  # per row: 0 and off
    assert kept(y, 0) == [2] and torch.equal(y[1], x[1])
    b = Batch(SamplingParams(top_p=0.0, seed=3), size=2)
    assert Chain().sample(x, b).tokens.tolist() == [2, 0]
    assert kept(Chain("top_p").candidates(x, b).dense(), 1) == [0]


# -- XTC ------------------------------------------------------------------------------------------

def test_xtc_vectors():
    assert kept(ops.xtc(L(*P5), xtc_probability=1.0, xtc_threshold=0.1)) == [2, 3, 4]
    assert kept(ops.xtc(L(*P5), xtc_probability=1.0, xtc_threshold=0.35)) == [0, 1, 2, 3, 4]
    assert kept(ops.xtc(L(*P5), xtc_probability=1.0, xtc_threshold=0.03)) == [3, 4]  # keeps .04


def test_xtc_ties_and_threshold_half():
    # all three above the threshold, the two least probable tie: the highest id stays
    assert kept(ops.xtc(L(0.4, 0.3, 0.3), xtc_probability=1.0, xtc_threshold=0.1)) == [2]
    assert kept(ops.xtc(torch.zeros(1, 2), xtc_probability=1.0, xtc_threshold=0.5)) == [1]
    x = torch.zeros(1, 2)
    assert torch.equal(ops.xtc(x, xtc_probability=1.0, xtc_threshold=0.51), x)  # > 0.5: off


def test_xtc_probability_zero_never_one_always_half_half():
    x = L(*P5).expand(4000, -1)
    step = torch.arange(4000)
    assert torch.equal(ops.xtc(x, xtc_probability=0.0, seed=3, step=step), x)
    assert (~torch.isfinite(ops.xtc(x, xtc_probability=1.0, seed=3, step=step)[:, 0])).all()
    acted = ~torch.isfinite(ops.xtc(x, xtc_probability=0.5, seed=3, step=step)[:, 0])
    assert abs(acted.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / 4000)
    again = ~torch.isfinite(ops.xtc(x, xtc_probability=0.5, seed=3, step=step)[:, 0])
    assert torch.equal(acted, again)  # the coin is a function of (seed, step)


def test_xtc_threshold_zero_with_masked_tokens_keeps_a_finite_token():
    y = ops.xtc(torch.tensor([[0.0, 1.0, -INF]]), xtc_probability=1.0, xtc_threshold=0.0)
    assert kept(y) == [0]  # every candidate is >= 0: keep the least probable candidate


# -- penalties ------------------------------------------------------------------------------------

def test_penalties_table():
    x = torch.tensor([[2.0, -1.0, 1.0, 0.5, 3.0]])
    h = [[0, 1, 0, 4, 4, 4]]
    y = ops.penalties(x, history=h, repetition_penalty=2.0, frequency_penalty=0.1,
                      presence_penalty=0.5, penalty_last_n=-1)
    # token 0: 2/2 - 2·.1 - .5 = 0.3; token 1: -1·2 - .1 - .5 = -2.6; token 4: 3/2 - .3 - .5 = 0.7
    assert y[0].tolist() == pytest.approx([0.3, -2.6, 1.0, 0.5, 0.7], abs=1e-6)


def test_repetition_penalty_once_per_distinct_token():
    x = torch.tensor([[2.0, -1.0, 4.0]])
    y = ops.penalties(x, history=[[0, 0, 0, 0, 1, 1, 1]], repetition_penalty=2.0)
    assert y[0].tolist() == [1.0, -2.0, 4.0]  # not 2/2^4, not -1·2^3
    y = ops.penalties(x, history=[[0, 1]], repetition_penalty=0.5)  # < 1 encourages repeats
    assert y[0].tolist() == [4.0, -0.5, 4.0]


def test_frequency_and_presence():
    x = torch.zeros(1, 4)
    y = ops.penalties(x, history=[[3, 3, 3, 1]], frequency_penalty=0.5, presence_penalty=0.25)
    assert y[0].tolist() == [0.0, -0.75, 0.0, -1.75]
    y = ops.penalties(x, history=[[3, 3, 3, 1]], frequency_penalty=-0.5)
    assert y[0].tolist() == [0.0, 0.5, 0.0, 1.5]


@pytest.mark.parametrize("last_n, expected", [
    (-1, [-4.0, -1.0, 0.0, -2.0]),   # whole context
    (0, [0.0, 0.0, 0.0, 0.0]),       # off
    (3, [-1.0, 0.0, 0.0, -2.0]),     # window [3, 0, 3]
    (1, [0.0, 0.0, 0.0, -1.0]),      # window [3]
    (100, [-4.0, -1.0, 0.0, -2.0]),  # window longer than the context
])
def test_penalty_window(last_n, expected):
    h = [[0, 0, 0, 1, 3, 0, 3]]
    y = ops.penalties(torch.zeros(1, 4), history=h, frequency_penalty=1.0, penalty_last_n=last_n)
    assert y[0].tolist() == expected


def test_default_window_is_64_tokens():
    h = [[7] * 10 + [1] * 64]  # token 7 only outside the last 64
    y = ops.penalties(torch.zeros(1, 8), history=h, presence_penalty=1.0)
    assert y[0].tolist() == [0, -1, 0, 0, 0, 0, 0, 0]


def test_penalties_per_row_windows_and_padding():
    h = torch.tensor([[-1, -1, 2, 2], [1, 2, 2, 2]])  # left padded
    y = ops.penalties(torch.zeros(2, 3), history=h, frequency_penalty=1.0,
                      penalty_last_n=torch.tensor([-1, 2]))
    assert y.tolist() == [[0, 0, -2], [0, 0, -2]]
    with pytest.raises(TemperanceError, match="padded with -1 on the left"):
        ops.penalties(torch.zeros(1, 3), history=torch.tensor([[1, -1]]), frequency_penalty=1.0)


# -- logit bias -----------------------------------------------------------------------------------

def test_logit_bias_table():
    y = ops.logit_bias(torch.zeros(1, 4), logit_bias={1: 2.5, 3: -INF})
    assert y[0].tolist() == [0.0, 2.5, 0.0, -INF]
    y = ops.logit_bias(torch.ones(2, 3), logit_bias=[{0: -1.0}, {2: 0.5, 0: 1.0}])
    assert y.tolist() == [[0.0, 1.0, 1.0], [2.0, 1.0, 1.5]]
    y = ops.logit_bias(torch.ones(1, 3), logit_bias={"2": -2})  # JSON-style keys
    assert y[0].tolist() == [1.0, 1.0, -1.0]


def test_logit_bias_errors():
    with pytest.raises(TemperanceError, match="logit_bias token id 4 is out of range for a vocabulary of 4"):
        ops.logit_bias(torch.zeros(1, 4), logit_bias={4: 1.0})
    with pytest.raises(TemperanceError, match=r"must be in \[-1e30, 1e30\] or -inf"):
        ops.logit_bias(torch.zeros(1, 4), logit_bias={1: INF})
    with pytest.raises(TemperanceError, match="one mapping or 2"):
        ops.logit_bias(torch.zeros(2, 4), logit_bias=[{1: 1.0}])


# -- no-repeat n-gram -----------------------------------------------------------------------------

def test_no_repeat_ngram_bigram_and_trigram():
    z = torch.zeros(1, 6)
    # bigram: last token 1 was followed by 2 and by 4 earlier -> ban 2 and 4
    assert kept(ops.no_repeat_ngram(z, history=[[1, 2, 3, 1, 4, 1]], no_repeat_ngram_size=2)) == [0, 1, 3, 5]
    # trigram: last two (1, 2) started (1, 2, 3) -> ban 3 only
    assert kept(ops.no_repeat_ngram(z, history=[[1, 2, 3, 1, 2]], no_repeat_ngram_size=3)) == [0, 1, 2, 4, 5]
    # (2, 1) never occurred before: nothing banned
    assert kept(ops.no_repeat_ngram(z, history=[[1, 2, 3, 2, 1]], no_repeat_ngram_size=3)) == [0, 1, 2, 3, 4, 5]
    # n = 1 bans every token seen; n longer than the context bans nothing
    assert kept(ops.no_repeat_ngram(z, history=[[1, 2, 5]], no_repeat_ngram_size=1)) == [0, 3, 4]
    assert kept(ops.no_repeat_ngram(z, history=[[1, 1]], no_repeat_ngram_size=3)) == [0, 1, 2, 3, 4, 5]


def test_no_repeat_ngram_ignores_left_padding():
    z = torch.zeros(2, 5)
    y = ops.no_repeat_ngram(z, history=[[4, 2], [1, 2, 3, 1, 2]], no_repeat_ngram_size=3)
    assert kept(y, 0) == [0, 1, 2, 3, 4] and kept(y, 1) == [0, 1, 2, 4]


def test_chain_raises_when_no_repeat_ngram_bans_every_token():
    b = Batch(SamplingParams(no_repeat_ngram_size=1), history=[[0, 1]])
    with pytest.raises(TemperanceError, match="row 0 has no token left: no_repeat_ngram"):
        Chain()(torch.zeros(1, 2), b)


# -- DRY ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p, ctx, mult, allowed, breakers, expected", [
    ((0.25,) * 4, [0, 1, 2, 0, 1], 1.0, 2, [], [0.296923, 0.296923, 0.109232, 0.296923]),
    ((0.2,) * 5, [0, 1, 2, 0, 1], 2.0, 2, [], [0.241818, 0.241818, 0.032727, 0.241818, 0.241818]),
    ((0.2,) * 5, [0, 1, 3, 4, 0, 1], 1.0, 2, [[3]], [0.2] * 5),
    ((0.2,) * 5, [0, 1, 2, 3, 4, 0, 1], 1.0, 4, [], [0.2] * 5),
    ((0.2,) * 5, [0, 1], 1.0, 2, [], [0.2] * 5),
])
def test_dry_llama_cpp_vectors(p, ctx, mult, allowed, breakers, expected):
    y = ops.dry(L(*p), history=[ctx], dry_multiplier=mult, dry_base=1.1, dry_allowed_length=allowed,
                dry_sequence_breakers=breakers)
    assert probs(y) == pytest.approx(expected, abs=1e-6)


def test_dry_penalty_grows_with_the_match_length():
    z = torch.zeros(1, 8)
    # "0 1 2 3 | 0 1 2": suffix (0 1 2) repeats with length 3 -> next token 3: 0.8·1.75^(3-2)
    y = ops.dry(z, history=[[0, 1, 2, 3, 0, 1, 2]], dry_multiplier=0.8, dry_base=1.75)
    assert y[0].tolist() == pytest.approx([0, 0, 0, -1.4, 0, 0, 0, 0], abs=1e-6)
    # the longest match wins per token: (5 6 0 1 2) -> 3 (len 5) and (0 1 2) -> 4 ... len 3
    y = ops.dry(z, history=[[5, 6, 0, 1, 2, 3, 7, 0, 1, 2, 4, 5, 6, 0, 1, 2]],
                dry_multiplier=1.0, dry_base=2.0, dry_allowed_length=2)
    assert y[0, 3].item() == pytest.approx(-8.0)   # 2^(5-2)
    assert y[0, 4].item() == pytest.approx(-2.0)   # 2^(3-2)
    assert y[0, [0, 1, 2, 5, 6, 7]].tolist() == [0.0] * 6


# History for the breaker tests: the suffix "5 6 0 1 2" occurred before, followed by 3.
BRK_HISTORY = [[5, 6, 0, 1, 2, 3, 5, 6, 0, 1, 2]]


@pytest.mark.parametrize("breakers, penalty", [
    ([], 8.0),               # match length 5 -> 2^(5-2)
    ([[5, 7]], 8.0),         # tail does not match: no limit
    ([[5, 6]], 2.0),         # multi-token breaker (5, 6): 3 tokens after it -> length capped at 3
    ([[5]], 4.0),            # single breaker 5: 4 tokens after it -> length 4
    ([[6]], 2.0),            # single breaker 6: 3 tokens after it
    ([[2]], 0.0),            # the last token is a breaker: no penalty at all
    ([[5, 6], [9]], 2.0),    # several breakers
])
def test_dry_multi_token_breakers_limit_the_match(breakers, penalty):
    y = ops.dry(torch.zeros(1, 10), history=BRK_HISTORY, dry_multiplier=1.0, dry_base=2.0,
                dry_allowed_length=2, dry_sequence_breakers=breakers)
    expected = [0.0] * 10
    expected[3] = -penalty
    assert y[0].tolist() == pytest.approx(expected, abs=1e-6)


def test_dry_single_token_breaker_is_never_penalised():
    z = torch.zeros(1, 8)
    h = [[0, 1, 5, 2, 0, 1]]  # (0 1) repeats; it was followed by 5
    assert ops.dry(z, history=h, dry_multiplier=1.0, dry_sequence_breakers=[])[0, 5].item() == -1.0
    assert ops.dry(z, history=h, dry_multiplier=1.0, dry_sequence_breakers=[[5]])[0, 5].item() == 0.0
    # 5 only heads a multi-token breaker (5, 6): it is not exempt
    assert ops.dry(z, history=h, dry_multiplier=1.0, dry_sequence_breakers=[[5, 6]])[0, 5].item() == -1.0


def test_dry_exponent_clamp_keeps_the_penalty_finite():
    h = [list(range(6)) * 40]  # a very long repeat: next token 0, match length 234
    for base in (1.75, 3.0, 1000.0):
        y = ops.dry(torch.zeros(1, 8), history=h, dry_multiplier=1.0, dry_base=base)
        max_exp = math.floor(88.7228391 / math.log(base))
        pen = base ** max_exp
        assert math.isfinite(y[0, 0].item()) and y[0, 0].item() < 0
        assert -y[0, 0].item() == pytest.approx(pen, rel=1e-5)
        assert pen < 3.4028235e38
        assert y[0, 1:].tolist() == [0.0] * 7
    # base 1 (no growth): the penalty is the multiplier
    y = ops.dry(torch.zeros(1, 8), history=h, dry_multiplier=0.5, dry_base=1.0)
    assert y[0, 0].item() == -0.5


def test_dry_window_and_per_row_breakers():
    z = torch.zeros(2, 5)
    h = [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 4, 0, 1]]
    # last 6 tokens "1 2 3 4 0 1": the earlier 0 is outside the window, match length 1 < 2
    y = ops.dry(z, history=h, dry_multiplier=1.0, dry_base=1.1, dry_penalty_last_n=torch.tensor([6, 7]))
    assert y[0].tolist() == [0.0] * 5 and y[1].tolist() == pytest.approx([0, 0, -1, 0, 0])
    y = ops.dry(z, history=h, dry_multiplier=1.0, dry_sequence_breakers=[[[0]], [[9]]])  # per row
    assert y[0].tolist() == [0.0] * 5 and y[1].tolist() == pytest.approx([0, 0, -1, 0, 0])
    with pytest.raises(TemperanceError, match="token-id sequences"):
        ops.dry(z, history=h, dry_multiplier=1.0, dry_sequence_breakers=["\n"])


def test_dry_per_row_breakers_with_an_empty_row():
    z = torch.zeros(2, 5)
    h = [[0, 1, 2, 3, 4, 0, 1], [0, 1, 2, 3, 4, 0, 1]]
    y = ops.dry(z, history=h, dry_multiplier=1.0, dry_sequence_breakers=[[[0]], []])
    assert y[0].tolist() == [0.0] * 5 and y[1].tolist() == pytest.approx([0, 0, -1, 0, 0])


def test_dry_never_empties_a_row():
    b = Batch(SamplingParams(dry_multiplier=5.0, dry_sequence_breakers=[]), history=[[0] * 200])
    out = Chain()(torch.zeros(1, 1), b)
    assert torch.isfinite(out).all()


def test_expand_sequence_breakers():
    assert ops.expand_sequence_breakers(["ab"], ["a", "b", "xab", "xa"],
                                        lambda s: [1] if s == "b" else []) == [(0, 1), (2,), (3, 1)]
    texts = ["#", "##", "###", "a#", "b", "\n", "x\ny"]
    enc = {"#": [0], "##": [1]}
    got = ops.expand_sequence_breakers(["###", "\n"], texts, lambda s: enc[s])
    assert got == [(0, 1), (1, 0), (1, 1), (2,), (3, 1), (5,), (6,)]
    # at most 40 characters (llama.cpp's cap; longer is an error), the tokenised tail cut at 20
    got = ops.expand_sequence_breakers(["a" * 40], ["a" * 40, "a"], lambda s: list(range(len(s))))
    assert got[0] == (0,) and got[1] == (1, *range(20))
    with pytest.raises(TemperanceError, match="at most 40 characters"):
        ops.expand_sequence_breakers(["a" * 41], ["a"], lambda s: [0])
