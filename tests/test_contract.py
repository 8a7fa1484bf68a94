"""The op contract (decisions.md, "Representation and contract"), checked for every op at once.

For each op with non-neutral knobs: neutral knobs are the identity (bit-exact); rows are
independent (also with per-row knob tensors); truncation ops only remove (kept entries are
bit-identical to the input); shaping ops are exempt as documented (temperature, dynatemp, smoothing,
penalties, dry, logit_bias); the input is never mutated; every row keeps a finite token; shape,
dtype and device are preserved.
"""

from __future__ import annotations

import math

import pytest
import torch

from temperance import ops

INF = math.inf
B, V = 4, 24
HISTORY = [[1, 2, 3, 1, 2, 3, 1, 2], [4, 5, 4, 5, 4, 5, 4], [0, 0, 0, 0], [7, 8, 9, 10, 7, 8]]
SHAPING = {"temperature", "dynatemp", "smoothing", "penalties", "dry", "logit_bias"}


def _t(*v, dtype=torch.float32):
    return torch.tensor(v, dtype=dtype)


# name -> (op, neutral knobs, scalar non-neutral knobs, per-row [B] knobs)
OPS = {
    "temperature": (ops.temperature, {}, dict(temperature=0.7),
                    dict(temperature=_t(0.7, 0.0, 2.0, 1.0))),
    "dynatemp": (ops.dynatemp, {}, dict(temperature=1.0, dynatemp_range=0.5),
                 dict(temperature=_t(1.0, 0.5, 1.5, 2.0), dynatemp_range=_t(0.5, 0.0, 1.0, 3.0),
                      dynatemp_exponent=_t(1.0, 2.0, 0.5, 1.0))),
    "smoothing": (ops.smoothing, {}, dict(smoothing_factor=0.5),
                  dict(smoothing_factor=_t(0.5, 0.0, 2.0, 0.1), smoothing_curve=_t(1.0, 2.0, 3.0, 1.5))),
    "top_k": (ops.top_k, {}, dict(top_k=3), dict(top_k=_t(3, 0, 1, 20, dtype=torch.int64))),
    "top_p": (ops.top_p, {}, dict(top_p=0.6), dict(top_p=_t(0.6, 1.0, 0.1, 0.95))),
    "min_p": (ops.min_p, {}, dict(min_p=0.2), dict(min_p=_t(0.2, 0.0, 1.0, 0.05))),
    "top_n_sigma": (ops.top_n_sigma, {}, dict(top_n_sigma=1.0),
                    dict(top_n_sigma=_t(1.0, 0.0, -1.0, 0.3))),
    "typical_p": (ops.typical_p, {}, dict(typical_p=0.5), dict(typical_p=_t(0.5, 1.0, 0.1, 0.9))),
    "tfs": (ops.tfs, {}, dict(tfs_z=0.9), dict(tfs_z=_t(0.9, 1.0, 0.0, 0.5))),
    "top_a": (ops.top_a, {}, dict(top_a=0.3), dict(top_a=_t(0.3, 0.0, 1.0, 0.1))),
    "epsilon": (ops.epsilon, {}, dict(epsilon_cutoff=0.05),
                dict(epsilon_cutoff=_t(0.05, 0.0, 0.9, 0.01))),
    "eta": (ops.eta, {}, dict(eta_cutoff=0.05), dict(eta_cutoff=_t(0.05, 0.0, 0.9, 0.01))),
    "xtc": (ops.xtc, dict(seed=3, step=1), dict(xtc_probability=1.0, xtc_threshold=0.05, seed=3, step=1),
            dict(xtc_probability=_t(1.0, 0.0, 0.5, 1.0), xtc_threshold=_t(0.05, 0.1, 0.1, 0.6),
                 seed=torch.tensor([3, 4, 5, 6]), step=torch.tensor([1, 2, 3, 4]))),
    "penalties": (ops.penalties, dict(history=HISTORY),
                  dict(history=HISTORY, repetition_penalty=1.5, frequency_penalty=0.3, presence_penalty=0.2),
                  dict(history=HISTORY, repetition_penalty=_t(1.5, 1.0, 0.5, 2.0),
                       frequency_penalty=_t(0.3, 0.0, -0.2, 1.0), presence_penalty=_t(0.2, 0.0, 1.0, -1.0),
                       penalty_last_n=_t(64, -1, 0, 2, dtype=torch.int64))),
    "dry": (ops.dry, dict(history=HISTORY), dict(history=HISTORY, dry_multiplier=0.8),
            dict(history=HISTORY, dry_multiplier=_t(0.8, 0.0, 2.0, 1.0), dry_base=_t(1.75, 1.0, 3.0, 1.1),
                 dry_allowed_length=_t(2, 1, 3, 1, dtype=torch.int64),
                 dry_penalty_last_n=_t(-1, 0, 5, 3, dtype=torch.int64))),
    "no_repeat_ngram": (ops.no_repeat_ngram, dict(history=HISTORY),
                        dict(history=HISTORY, no_repeat_ngram_size=2),
                        dict(history=HISTORY, no_repeat_ngram_size=_t(2, 0, 3, 1, dtype=torch.int64))),
    "logit_bias": (ops.logit_bias, dict(logit_bias={}), dict(logit_bias={1: 2.0, 5: -INF}),
                   dict(logit_bias=[{1: 2.0}, {}, {5: -INF}, {0: -1.0, 19: 3.0}])),
    # mirostat has no neutral setting for the op (mirostat=0 is an error): see NO_NEUTRAL
    "mirostat2": (ops.mirostat, None, dict(mu=3.0, mirostat=2),
                  dict(mu=_t(3.0, 1.0, 8.0, 0.0), mirostat=_t(2, 2, 2, 2, dtype=torch.int64))),
    "mirostat1": (ops.mirostat, None, dict(mu=3.0, mirostat=1),
                  dict(mu=_t(3.0, 1.0, 8.0, -1.0), mirostat=_t(1, 1, 2, 1, dtype=torch.int64))),
}
NAMES = sorted(OPS)


def _inputs(dtype=torch.float32) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(B, V, generator=g) * 2
    ties = torch.round(x)
    masked = x.clone()
    masked[:, ::3] = -INF
    flat = torch.zeros(B, V)
    return [t.to(dtype) for t in (x, ties, masked, flat)]


def _row(value, i):
    if isinstance(value, torch.Tensor) and value.dim() == 1 and value.shape[0] == B:
        return value[i:i + 1]
    if isinstance(value, list) and len(value) == B:
        return value[i:i + 1]
    return value


def test_every_public_op_is_covered():
    covered = {OPS[n][0].__name__ for n in OPS}
    public = set(ops.__all__) - {"expand_sequence_breakers", "mirostat_update"}
    assert public <= covered, public - covered


@pytest.mark.parametrize("name", NAMES)
def test_op_contract(name):
    op, neutral, knobs, per_row = OPS[name]
    for x in _inputs():
        before = x.clone()
        # neutral knobs: the identity, bit for bit
        if neutral is not None:
            assert torch.equal(op(x, **neutral), x), name
        for kw in (knobs, per_row):
            y = op(x, **kw)
            # the input is not mutated; shape, dtype and device are preserved; a fresh tensor
            assert torch.equal(x, before), f"{name} mutated its input"
            assert y.shape == x.shape and y.dtype == x.dtype and y.device == x.device
            assert y.data_ptr() != x.data_ptr()
            # every row keeps at least one finite token; no NaN or +inf is produced
            assert torch.isfinite(y).any(-1).all(), name
            assert not torch.isnan(y).any() and not (y == INF).any(), name
            # removed stays removed
            assert not torch.isfinite(y[~torch.isfinite(x)]).any(), name
            if name not in SHAPING:  # truncation only removes: survivors are bit-identical
                keep = torch.isfinite(y)
                assert torch.equal(y[keep], x[keep]), name
        # the non-neutral scalar knobs do something on the random input
        assert not torch.equal(op(_inputs()[0], **knobs), _inputs()[0]), f"{name} knobs are neutral"


@pytest.mark.parametrize("name", NAMES)
def test_rows_are_independent(name):
    op, _, knobs, per_row = OPS[name]
    for x in _inputs():
        for kw in (knobs, per_row):
            y = op(x, **kw)
            for i in range(B):
                yi = op(x[i:i + 1], **{k: _row(v, i) for k, v in kw.items()})
                assert torch.equal(yi[0], y[i]), (name, i)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_dtypes_are_preserved(name, dtype):
    op, _, knobs, per_row = OPS[name]
    for x in _inputs(dtype):
        y = op(x, **per_row)
        assert y.dtype == dtype and y.shape == x.shape
        assert torch.isfinite(y).any(-1).all()


@pytest.mark.parametrize("name", NAMES)
def test_bad_knob_shapes_and_values_are_temperance_errors(name):
    from temperance import TemperanceError
    op, _, knobs, per_row = OPS[name]
    x = _inputs()[0]
    tensor_knobs = [k for k, v in per_row.items() if isinstance(v, torch.Tensor) and k not in ("seed", "step", "mu")]
    for k in tensor_knobs:
        bad = dict(per_row)
        bad[k] = per_row[k][:2]  # wrong length
        with pytest.raises(TemperanceError, match=k):
            op(x, **bad)
    with pytest.raises(TemperanceError, match="logits must be a floating-point"):
        op(x[0], **knobs)  # 1-D
    with pytest.raises(TemperanceError, match="logits must be a floating-point"):
        op(x.long(), **knobs)
