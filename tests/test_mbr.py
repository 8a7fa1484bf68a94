"""MBR decoding and best-of-n."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance import SamplingParams, TemperanceError
from temperance.generate import generate_text
from temperance.mbr import best_of_n, best_of_select, mbr, mbr_select, utility_matrix
from temperance.runtime.hf import HFRuntime

torch.set_num_threads(1)
EXACT = lambda h, r: float(h == r)  # noqa: E731


@pytest.fixture(scope="module")
def rt():
    return HFRuntime(tiny_llama(), hf_tokenizer())


def test_exact_match_utility_returns_the_mode():
    cands = ["b", "a", "c", "a", "b", "a"]
    sel = mbr_select(cands, EXACT)
    assert sel.text == "a" and sel.index == 1
    # leave-one-out: "a" scores 2/5 (its two other copies), "b" 1/5, "c" 0
    assert sel.scores == pytest.approx([0.2, 0.4, 0.0, 0.4, 0.2, 0.4])


def test_ties_go_to_higher_logprob_then_lower_index():
    assert mbr_select(["x", "y", "z"], EXACT, logprobs=[-5.0, -1.0, -3.0]).index == 1
    assert mbr_select(["x", "y", "z"], EXACT).index == 0


def test_n_equals_one_returns_the_only_candidate(rt):
    assert mbr_select(["only"], "chrf").text == "only"
    sel = mbr(rt, [1, 40, 41], n=1, max_tokens=6, utility=EXACT)
    assert len(sel.candidates) == 1 and sel.text == sel.candidates[0]


@pytest.mark.parametrize("utility", ["chrf", "bleu"])
def test_string_utilities_pick_the_consensus(utility):
    cands = ["the cat sat on the mat", "the cat sat on a mat", "a dog ran far away quickly",
             "the cat sat on the mat today"]
    sel = mbr_select(cands, utility)
    assert sel.index != 2                      # the outlier never wins
    U = utility_matrix(cands, utility)
    assert 0 <= float(U.min()) and float(U.max()) <= 1 and U[0, 2] < U[0, 1]


def test_mbr_over_model_samples_is_mode_with_exact_match(rt):
    p = SamplingParams(temperature=1.0, epsilon_cutoff=0.02, seed=4)
    sel = mbr(rt, [1, 40, 41], p, n=6, max_tokens=1, utility=EXACT)
    samples = [c.text for c in generate_text(rt, [[1, 40, 41]], p, n=6, max_tokens=1)[0]]
    assert sel.candidates == samples
    assert samples.count(sel.text) == max(samples.count(s) for s in samples)


def test_best_of_n(rt):
    sel = best_of_n(rt, [1, 40, 41], n=4, max_tokens=5)
    assert sel.scores[sel.index] == max(sel.scores) and len(sel.candidates) == 4
    user = best_of_n(rt, [1, 40, 41], SamplingParams(temperature=1.0, seed=1), n=4, max_tokens=5,
                     score=lambda t: -len(t))
    assert len(user.text) == min(len(c) for c in user.candidates)
    assert best_of_select(["a", "b"], [-2.0, -1.0]).text == "b"


def test_bad_input():
    with pytest.raises(TemperanceError):
        mbr_select([], "chrf")
    with pytest.raises(TemperanceError, match="utility"):
        mbr_select(["a", "b"], "rouge")


@pytest.mark.slow
def test_embedding_utility():
    cands = ["The weather is lovely today.", "It is a beautiful sunny day.",
             "Quarterly revenue fell by four percent.", "Today the weather is really nice."]
    U = utility_matrix(cands, "embedding")
    assert U[0, 1] > 0.4 and U[0, 2] < 0.2 and U[0, 3] > U[0, 2]
    assert mbr_select(cands, "embedding").index != 2
