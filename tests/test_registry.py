"""The stage registry: every knob is declared once (in its sampler's file) and every surface — the
params, the CLI, the request parser, the playground's list, the chain — is derived from it."""

from __future__ import annotations

import argparse

import pytest
import torch

from temperance import Batch, Chain, SamplingParams, TemperanceError, ops
from temperance.cli import add_sampler_flags, params_from_args
from temperance.params import FIELDS, KNOBS, SAMPLERS, STAGE, describe
from temperance.request import LLAMA_NAMES, params_from_request


def _valid_other(k):
    """A valid, non-neutral value for numeric knob k."""
    for v in (2, 0.5, 3, 0.25, 1, 0.0, -1):
        v = int(v) if k.integer else float(v)
        if v != k.neutral and k.valid(v):
            return v
    raise AssertionError(k.name)


def test_every_knob_belongs_to_one_stage_and_is_a_field():
    names = [k.name for s in ops.STAGES for k in s.knobs]
    assert len(names) == len(set(names))
    assert set(FIELDS) == set(names)
    assert set(FIELDS) <= set(SamplingParams.__dataclass_fields__)
    assert set(SamplingParams.__dataclass_fields__) - set(FIELDS) == {"samplers", "seed"}


def test_default_order_is_the_in_order_stages():
    assert SAMPLERS == tuple(s.name for s in ops.STAGES if s.in_order)
    assert SAMPLERS[0] == "logit_bias" and SAMPLERS[-1] == "temperature"


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_each_numeric_knob_travels_cli_to_params(name):
    k = KNOBS[name]
    v = _valid_other(k)
    p = argparse.ArgumentParser()
    add_sampler_flags(p)
    flag = k.flag if isinstance(k.flag, str) else k.flag[0]
    args = p.parse_args([flag, str(v)])
    try:
        params = params_from_args(args)
    except TemperanceError as e:  # a knob that needs its stage / no mirostat: the message says so
        assert "stage" in str(e) or "mirostat" in str(e), str(e)
        return
    assert getattr(params, name) == v


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_each_numeric_knob_is_a_request_field_under_every_name(name):
    k = KNOBS[name]
    v = _valid_other(k)
    for field in k.request_names:
        assert LLAMA_NAMES[field] == name
        try:
            params, _ = params_from_request({field: v})
        except TemperanceError as e:
            assert "stage" in str(e) or "mirostat" in str(e), str(e)
            continue
        assert getattr(params, name) == v


def test_request_errors_name_the_field_as_sent():
    with pytest.raises(TemperanceError, match=r"^repeat_penalty must be in \(0, 1e30\]"):
        params_from_request({"repeat_penalty": -1})
    with pytest.raises(TemperanceError, match=r"^repetition_penalty must be in"):
        params_from_request({"repetition_penalty": -1})


def test_special_knobs_from_cli():
    p = argparse.ArgumentParser()
    add_sampler_flags(p)
    args = p.parse_args(["-l", "5-inf", "--logit-bias", "7+1.5", "--dry-sequence-breaker", "\n",
                         "--dry-sequence-breaker", "END"])
    params = params_from_args(args)
    assert params.logit_bias == {5: float("-inf"), 7: 1.5}
    assert params.dry_sequence_breakers == ("\n", "END")
    with pytest.raises(TemperanceError, match="--logit-bias must look like"):
        params_from_args(p.parse_args(["-l", "banana"]))


def test_describe_lists_every_knob_once_with_its_meaning():
    d = describe()
    assert d["order"] == list(SAMPLERS)
    listed = [k["field"] for s in d["stages"] for k in s["knobs"]] + [
        k["field"] for k in d["mirostat"]["knobs"]]
    assert sorted(listed) == sorted(FIELDS)
    for s in d["stages"]:
        assert s["summary"] and s["name"] in SAMPLERS
        for k in s["knobs"]:
            assert k["help"] and k["range"]
    temp = next(s for s in d["stages"] if s["name"] == "temperature")
    assert {"dynatemp_range", "smoothing_factor"} <= {k["field"] for k in temp["knobs"]}


def test_sub_stage_knobs_need_their_home_stage():
    with pytest.raises(TemperanceError, match="no 'temperature' stage"):
        SamplingParams(dynatemp_range=0.5, temperature=1.0, samplers="top_k")
    SamplingParams(dynatemp_range=0.5, samplers="temperature")


# -- user stages ---------------------------------------------------------------------------------

def halve_top(logits, batch):
    """divide the largest logit of each row by two"""
    i = logits.argmax(-1, keepdim=True)
    return logits.scatter(1, i, logits.gather(1, i) / 2)


def test_user_callable_stage_runs_in_order_on_every_path():
    x = torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 8.0, 1.0, -1.0]])
    batch = Batch(SamplingParams(top_k=3), size=2, seed=torch.tensor([1, 2]))
    chain = Chain(["top_k", halve_top, "temperature"])
    assert chain.names == ("top_k", "halve_top", "temperature")
    dense = chain(x, batch)
    want = ops.top_k(x, top_k=3)
    want = halve_top(want, batch)
    assert torch.equal(dense, want)
    assert torch.equal(chain.candidates(x, batch).dense(), dense)  # no compaction before it
    assert [n for n, _ in chain.stages(x, batch)] == ["top_k", "halve_top"]
    assert torch.equal(x, torch.tensor([[4.0, 1.0, 3.0, 2.0], [0.0, 8.0, 1.0, -1.0]]))


def test_user_stage_that_breaks_the_contract_is_an_error():
    batch = Batch(SamplingParams(), size=1)
    x = torch.zeros(1, 3)
    with pytest.raises(TemperanceError, match="must return a floating-point tensor of shape"):
        Chain([lambda l, b: l[:, :2]])(x, batch)
    with pytest.raises(TemperanceError, match="removed every token"):
        Chain([lambda l, b: torch.full_like(l, float("-inf"))])(x, batch)


def test_duplicate_stage_in_a_mixed_order_is_an_error():
    with pytest.raises(TemperanceError, match="appears twice"):
        Chain(["top_k", halve_top, "top_k"])


def test_stage_table_is_what_the_chain_dispatches():
    for s in ops.STAGES:
        assert STAGE[s.name] is s
        if s.in_order:
            assert s.apply is not None, s.name
