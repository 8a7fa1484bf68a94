"""temperance's processor in vLLM's offline engine (`LLM`), end to end on SmolLM2-135M (CPU build).

One engine for the module (~30-80 s to start). What is measured, not assumed:
- a temperance logit_bias ban changes vLLM's greedy output (and plain rows beside it are untouched);
- min-p 0.1 at T = 3 through our chain (truncation before temperature) stays on the model's
  high-probability tokens where vLLM's plain sampling does not: vLLM refuses T = 3 (its cap is 2),
  so its plain T = 2 is the comparison (it would only be worse at 3). Criterion: the mean negative
  log-likelihood per token of the sampled text under the raw model at T = 1 (vLLM returns the raw
  logprobs of the sampled tokens by default), over 8 seeded samples of 48 tokens each;
- seeded runs repeat (min-p, XTC whose coin is our seed, mirostat, DRY);
- a bad knob is a validation error naming it.
"""

from __future__ import annotations

import math

import pytest

vllm = pytest.importorskip("vllm")
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.exceptions import VLLMValidationError  # noqa: E402 (not a ValueError)

PROMPT = "The capital of France is"
TOPIC = "Here is my favourite recipe for a chocolate cake. First, you need"


@pytest.fixture(scope="module")
def llm(model_dir):
    engine = LLM(model=model_dir, dtype="float32", logits_processors=["temperance.vllm:LogitsProcessor"],
                 enforce_eager=True, max_model_len=512, seed=0, generation_config="vllm")
    yield engine
    core = getattr(engine.llm_engine, "engine_core", None)
    if core is not None:
        core.shutdown()


def tokens(outs) -> list[list[int]]:
    return [list(o.outputs[0].token_ids) for o in outs]


def knobs(**kw) -> dict:
    return {"temperance": kw}


def test_logit_bias_ban_changes_greedy_output(llm):
    plain = tokens(llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=6)))[0]
    first = plain[0]
    ban = SamplingParams(temperature=0, max_tokens=6, extra_args=knobs(logit_bias={str(first): False}))
    # a mixed batch: the plain row beside ours keeps vLLM's output exactly
    both = tokens(llm.generate([PROMPT, PROMPT], [ban, SamplingParams(temperature=0, max_tokens=6)]))
    assert both[0][0] != first and first not in both[0]
    assert both[1] == plain
    # our own temperature 0 (vLLM's 1) is the same greedy choice
    ours = SamplingParams(max_tokens=6, extra_args=knobs(temperature=0, logit_bias={str(first): False}))
    assert tokens(llm.generate([PROMPT], ours))[0] == both[0]


def mean_raw_nll(llm, sps) -> float:
    outs = llm.generate([TOPIC] * len(sps), sps)
    nll = [-lp[t].logprob for o in outs for t, lp in zip(o.outputs[0].token_ids, o.outputs[0].logprobs)]
    assert all(math.isfinite(x) for x in nll)
    return sum(nll) / len(nll)


def test_min_p_at_high_temperature_stays_on_topic(llm):
    n, kw = 8, dict(max_tokens=48, logprobs=0, ignore_eos=True)
    with pytest.raises(VLLMValidationError, match="temperature"):
        SamplingParams(temperature=3.0)  # vLLM's own temperature stops at 2
    ours = mean_raw_nll(llm, [SamplingParams(seed=s, **kw, extra_args=knobs(min_p=0.1, temperature=3.0))
                              for s in range(n)])
    plain = mean_raw_nll(llm, [SamplingParams(seed=s, temperature=2.0, **kw) for s in range(n)])
    t1 = mean_raw_nll(llm, [SamplingParams(seed=s, temperature=1.0, **kw) for s in range(n)])
    print(f"\nmean raw NLL/token: temperance min-p 0.1 at T=3 {ours:.2f}, vLLM plain T=2 {plain:.2f}, "
          f"vLLM plain T=1 {t1:.2f}")
    # min-p keeps tokens with p >= 0.1 * p_max, so each kept token costs at most ln(10) nats more
    # than the top one; plain T = 2 samples the flattened tail of 49k tokens.
    assert ours < 3.5
    assert plain > 6.0
    assert plain - ours > 3.0


@pytest.mark.parametrize("kw", [dict(min_p=0.1, temperature=1.5),
                                dict(xtc_probability=0.5, xtc_threshold=0.1, seed=7),
                                dict(mirostat=2, mirostat_tau=4.0),
                                dict(dry_multiplier=0.8, dry_allowed_length=2, repeat_penalty=1.1)],
                         ids=["min_p", "xtc", "mirostat", "dry"])
def test_seeded_runs_repeat(llm, kw):
    def run(seed):
        sps = [SamplingParams(seed=seed + i, max_tokens=24, extra_args=knobs(**kw)) for i in range(3)]
        return tokens(llm.generate([TOPIC, PROMPT, TOPIC], sps))

    a, b, c = run(0), run(0), run(100)
    assert a == b
    assert a != c
    assert all(len(t) > 0 for t in a)


def test_bad_knob_is_a_validation_error_naming_it(llm):
    with pytest.raises(VLLMValidationError, match=r"min_p must be in \[0, 1\].*got 2"):
        llm.generate([PROMPT], SamplingParams(max_tokens=2, extra_args=knobs(min_p=2)))
    with pytest.raises(VLLMValidationError, match="vLLM's own temperature=0.7"):
        llm.generate([PROMPT], SamplingParams(max_tokens=2, temperature=0.7, extra_args=knobs(min_p=0.1)))
    # the engine is still serving
    assert len(tokens(llm.generate([PROMPT], SamplingParams(temperature=0, max_tokens=2)))[0]) == 2
