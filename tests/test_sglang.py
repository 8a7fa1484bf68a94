"""temperance.sglang.CustomLogitProcessor on hand-built inputs (SGLang cannot be installed on CPU).

The hook's contract: ``__call__(logits [rows using the processor, V], custom_param_list)`` with one
dict per row (our knobs plus ``"__req__"``, a proxy with ``origin_input_ids`` and ``output_ids``),
returning logits of the same shape. Each processed row must equal temperance's own chain on that
row with the history written out by hand.
"""

from __future__ import annotations

import logging
from abc import ABC
from types import SimpleNamespace

import pytest
import torch

from temperance import Batch, SamplingParams, TemperanceError
from temperance.chain import Chain
from temperance.sglang import CustomLogitProcessor

V = 10


def req(prompt, output):
    return SimpleNamespace(origin_input_ids=list(prompt), output_ids=list(output))


def chain_row(row, history, step=0, seed=0, **knobs):
    p = SamplingParams(**knobs, seed=seed)
    return Chain(p)(row.view(1, -1), Batch(p, history=[history], step=step, dry_breakers=[[]]))[0]


@pytest.fixture
def logits():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, V, generator=g)


def test_it_is_the_hooks_abstract_base():
    """SGLang's ABC when installed, else the stand-in: abstract __call__, to_str to serialise."""
    assert isinstance(CustomLogitProcessor(), ABC)
    base = CustomLogitProcessor.__mro__[1]
    assert "__call__" in base.__abstractmethods__ and callable(base.to_str)
    with pytest.raises(TypeError):
        base()


def test_rows_get_their_own_chain_with_history(logits):
    raw = logits.clone()
    params = [
        {"min_p": 0.2, "temperature": 2.0, "__req__": req([1], [])},
        {"__req__": req([1], [2])},  # no knobs: untouched
        {"repeat_penalty": 2.0, "repeat_last_n": -1, "__req__": req([3, 4], [5, 6])},
        {"xtc_probability": 1.0, "xtc_threshold": 0.05, "seed": 9, "__req__": req([1], [2, 3, 4])},
    ]
    out = CustomLogitProcessor()(logits, params)
    assert out.shape == raw.shape
    assert torch.allclose(out[0], chain_row(raw[0], [1], min_p=0.2, temperature=2.0))
    assert torch.equal(out[1], raw[1])
    assert torch.equal(out[2], chain_row(raw[2], [3, 4, 5, 6], step=2, repetition_penalty=2.0,
                                         penalty_last_n=-1))
    assert torch.equal(out[3], chain_row(raw[3], [1, 2, 3, 4], step=3, seed=9, xtc_probability=1.0,
                                         xtc_threshold=0.05))
    assert not torch.equal(out[2], raw[2]) and not torch.equal(out[3], raw[3])


def test_none_or_empty_params_are_untouched(logits):
    raw = logits.clone()
    assert torch.equal(CustomLogitProcessor()(logits, None), raw)
    assert torch.equal(CustomLogitProcessor()(logits, [None, {}, {"__req__": req([1], [])}, None]), raw)


def test_steps_are_stateless_and_repeat(logits):
    """A fresh processor each step (as SGLang makes them): same knobs + history → same logits."""
    d = {"top_n_sigma": 1.0, "dry_multiplier": 1.0, "dry_sequence_breakers": [], "seed": 3,
         "__req__": req([1, 2, 1, 2], [1])}
    a = CustomLogitProcessor()(logits[:1].clone(), [d])
    b = CustomLogitProcessor()(logits[:1].clone(), [dict(d)])
    assert torch.equal(a, b)
    p = SamplingParams(top_n_sigma=1.0, dry_multiplier=1.0, dry_sequence_breakers=[], seed=3)
    want = Chain(p)(logits[:1], Batch(p, history=[[1, 2, 1, 2, 1]], step=1, dry_breakers=[[]]))
    assert torch.equal(a, want)


def test_our_greedy_keeps_only_the_argmax(logits):
    out = CustomLogitProcessor()(logits[:1].clone(), [{"temperature": 0, "logit_bias": {"0": -100},
                                                       "__req__": req([1], [])}])
    assert int(torch.isfinite(out[0]).sum()) == 1
    shifted = logits[0].clone()
    shifted[0] -= 100
    assert int(out[0].argmax()) == int(shifted.argmax())


def test_bad_knobs_and_mirostat_are_logged_and_left_alone(logits, caplog):
    raw = logits.clone()
    with caplog.at_level(logging.ERROR, logger="temperance.sglang"):
        out = CustomLogitProcessor()(logits, [{"min_p": 2}, {"mirostat": 2}, {"max_tokens": 4},
                                              {"top_k": 2, "__req__": req([1], [])}])
    assert torch.equal(out[:3], raw[:3])
    assert int(torch.isfinite(out[3]).sum()) == 2
    text = caplog.text
    assert "min_p must be in [0, 1]" in text and "mirostat=2 needs state between steps" in text
    assert "max_tokens in custom_params is a generation option" in text


def test_validate_names_the_knob():
    assert CustomLogitProcessor.validate({"min_p": 0.1, "__req__": object()}) == SamplingParams(min_p=0.1)
    with pytest.raises(TemperanceError, match=r"top_p must be in \[0, 1\]"):
        CustomLogitProcessor.validate({"top_p": 1.5})
    with pytest.raises(TemperanceError, match="custom_params must be an object"):
        CustomLogitProcessor.validate([1])


def test_dry_string_breakers_need_a_tokenizer(logits, caplog):
    with caplog.at_level(logging.ERROR, logger="temperance.sglang"):
        out = CustomLogitProcessor()(logits[:1].clone(), [{"dry_multiplier": 1.0, "__req__": req([1], [])}])
    assert torch.equal(out, logits[:1]) and "set CustomLogitProcessor.TOKENIZER" in caplog.text
