"""temperance.vllm.LogitsProcessor on hand-built inputs (no engine): both interfaces.

The older interface gets real `BatchUpdate`s (added / removed / moved / swapped rows); the newer one
real `LogitsContext`s over hand-built request-state buffers (rows reordered, a speculative-decoding
layout, recycled slots). Every processed row is compared with temperance's own `Chain` on that row
with the history written out by hand.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

pytest.importorskip("vllm")
from vllm import SamplingParams as VSP  # noqa: E402
from vllm.v1.sample.logits_processor import BatchUpdate, MoveDirectionality  # noqa: E402
from vllm.v1.worker.gpu.sample.logits_processor import LogitsContext, LogitsProcRequestState  # noqa: E402

from temperance import Batch, SamplingParams  # noqa: E402
from temperance.chain import Chain  # noqa: E402
from temperance.ops.mirostat import mirostat_update  # noqa: E402
from temperance.vllm import LogitsProcessor, params_of  # noqa: E402

V = 12
CFG = SimpleNamespace(model_config=None)  # the processor only reads it for DRY's tokenizer


def ours(**knobs) -> VSP:
    return VSP(extra_args={"temperance": knobs})


def expected(knobs: dict, row: torch.Tensor, history: list[int], step: int = 0, seed: int = 0):
    p = SamplingParams(**knobs, seed=seed)
    batch = Batch(p, history=[history], step=step, dry_breakers=[[]])
    return Chain(p)(row.view(1, -1), batch)[0]


def older() -> LogitsProcessor:
    return LogitsProcessor(CFG, torch.device("cpu"), False)


def update(proc, size, removed=(), added=(), moved=()):
    proc.update_state(BatchUpdate(size, list(removed), list(added), list(moved)))


@pytest.fixture
def logits():
    torch.manual_seed(0)
    return torch.randn(3, V)


# -- validation ---------------------------------------------------------------------------------

def test_validate_names_the_bad_knob():
    with pytest.raises(ValueError, match=r"min_p must be in \[0, 1\].*got 2.0"):
        LogitsProcessor.validate_params(ours(min_p=2))
    with pytest.raises(ValueError, match="unknown field.*'min_pp'"):
        LogitsProcessor.validate_params(ours(min_pp=0.1))


def test_validate_rejects_vllm_samplers_together_with_ours():
    for kw in [dict(temperature=0.7), dict(top_k=5), dict(top_p=0.9), dict(min_p=0.1),
               dict(repetition_penalty=1.2), dict(frequency_penalty=0.5), dict(presence_penalty=0.5)]:
        name = next(iter(kw))
        with pytest.raises(ValueError, match=f"vLLM's own {name}="):
            LogitsProcessor.validate_params(VSP(**kw, extra_args={"temperance": {"min_p": 0.1}}))
    # vLLM's greedy and its neutral values compose with ours; vLLM's own samplers without ours too
    LogitsProcessor.validate_params(VSP(temperature=0, extra_args={"temperance": {"min_p": 0.1}}))
    LogitsProcessor.validate_params(VSP(temperature=0.7, top_k=5))


def test_knobs_as_json_string_and_generation_options_rejected():
    assert params_of(VSP(extra_args={"temperance": '{"min_p": 0.2, "temp": 3}'})) == \
        SamplingParams(min_p=0.2, temperature=3)
    assert params_of(VSP()) is None and params_of(VSP(extra_args={"other": 1})) is None
    with pytest.raises(ValueError, match="must be a JSON object"):
        params_of(VSP(extra_args={"temperance": "{min_p: 1"}))
    with pytest.raises(ValueError, match="max_tokens .* generation option"):
        params_of(ours(max_tokens=5))
    with pytest.raises(ValueError, match="must be an object"):
        params_of(VSP(extra_args={"temperance": [1, 2]}))


# -- the older interface ------------------------------------------------------------------------

def test_requests_without_knobs_are_untouched(logits):
    proc = older()
    update(proc, 3, added=[(0, VSP(), [1, 2], []), (1, VSP(seed=3), None, []), (2, VSP(), [4], [])])
    before = logits.clone()
    assert proc.apply(logits) is logits and torch.equal(logits, before) and not proc.reqs


def test_rows_follow_added_removed_swapped_and_moved(logits):
    proc = older()
    a, c = dict(top_k=2), dict(min_p=0.3, temperature=2.0)
    update(proc, 3, added=[(0, ours(**a), [1], []), (1, VSP(), [2], []), (2, ours(**c), [3], [])])
    raw = logits.clone()
    out = proc.apply(logits.clone())
    assert torch.equal(out[0], expected(a, raw[0], [1])) and torch.equal(out[1], raw[1])
    assert torch.allclose(out[2], expected(c, raw[2], [3]))
    # swap 0 <-> 2: the knobs travel with their requests
    update(proc, 3, moved=[(0, 2, MoveDirectionality.SWAP)])
    out = proc.apply(raw.clone())
    assert torch.allclose(out[0], expected(c, raw[0], [3])) and torch.equal(out[2], expected(a, raw[2], [1]))
    # remove row 1, move 2 -> 1 (one way): row 2 is empty now
    update(proc, 2, removed=[1], moved=[(2, 1, MoveDirectionality.UNIDIRECTIONAL)])
    assert sorted(proc.reqs) == [0, 1]
    out = proc.apply(raw[:2].clone())
    assert torch.equal(out[1], expected(a, raw[1], [1]))
    # a plain request added over a slot of ours clears it
    update(proc, 2, added=[(0, VSP(), [5], [])])
    out = proc.apply(raw[:2].clone())
    assert torch.equal(out[0], raw[0]) and list(proc.reqs) == [1]


def test_history_is_prompt_plus_live_output(logits):
    proc = older()
    knobs = dict(repeat_penalty=1.5, repeat_last_n=-1)
    output: list[int] = []
    update(proc, 1, added=[(0, ours(**knobs), [3, 4], output)])
    raw = logits[:1].clone()
    out = proc.apply(raw.clone())
    p = dict(repetition_penalty=1.5, penalty_last_n=-1)
    assert torch.equal(out[0], expected(p, raw[0], [3, 4]))
    output += [7, 9]  # vLLM appends the sampled tokens to the same list
    out = proc.apply(raw.clone())
    assert torch.equal(out[0], expected(p, raw[0], [3, 4, 7, 9], step=2))
    assert not torch.equal(out[0], expected(p, raw[0], [3, 4], step=2))


def test_async_placeholders_are_not_history(logits):
    proc = older()
    output = [7, -1]  # the newest token is not known yet
    update(proc, 1, added=[(0, ours(repeat_penalty=2.0), [3], output)])
    out = proc.apply(logits[:1].clone())
    assert torch.equal(out[0], expected(dict(repetition_penalty=2.0), logits[0], [3, 7], step=2))


def test_our_greedy_keeps_only_the_argmax(logits):
    proc = older()
    update(proc, 1, added=[(0, ours(temperature=0, logit_bias={"3": False}), [1], [])])
    row = logits[0].clone()
    row[3] = 10.0  # banned: the argmax of the rest survives alone
    out = proc.apply(row.view(1, -1).clone())[0]
    masked = row.clone()
    masked[3] = -math.inf
    assert torch.isfinite(out).sum() == 1 and int(out.argmax()) == int(masked.argmax())


def test_mirostat_learns_from_the_token_vllm_chose(logits):
    proc = older()
    output: list[int] = []
    update(proc, 1, added=[(0, ours(mirostat=2, mirostat_tau=3.0, mirostat_eta=0.5), [1], output)])
    out = proc.apply(logits[:1].clone())
    req = proc.reqs[0]
    assert float(req.mu) == pytest.approx(6.0)
    logq = torch.log_softmax(out[0], -1)
    chosen = int(torch.isfinite(out[0]).nonzero()[-1])  # any surviving token: "vLLM's draw"
    output.append(chosen)
    proc.apply(logits[:1].clone())
    want = mirostat_update(torch.tensor(6.0), logq[chosen], mirostat_tau=3.0, mirostat_eta=0.5)
    assert float(req.mu) == pytest.approx(float(want)) and float(req.mu) != pytest.approx(6.0)
    mu = float(req.mu)
    proc.apply(logits[:1].clone())  # no new token (e.g. a prefill chunk): nothing to learn
    assert float(req.mu) == mu and len(req.pending) == 1


def test_seed_defaults_to_vllms_and_keys_xtc(logits):
    proc = older()
    knobs = dict(xtc_probability=1.0, xtc_threshold=0.05)
    update(proc, 2, added=[(0, VSP(seed=11, extra_args={"temperance": knobs}), [1], []),
                           (1, VSP(extra_args={"temperance": {**knobs, "seed": 5}}), [1], [])])
    assert proc.reqs[0].seed == 11 and proc.reqs[1].seed == 5
    out = proc.apply(logits[:2].clone())
    assert torch.allclose(out[0], expected(knobs, logits[0], [1], seed=11))


# -- the newer interface ------------------------------------------------------------------------

def req_states(tokens: dict[int, list[int]], prompt_len: dict[int, int], slots: int = 4, L: int = 16):
    all_ids = torch.zeros(slots, L, dtype=torch.int32)
    plen = np.zeros(slots, dtype=np.int32)
    for s, ids in tokens.items():
        all_ids[s, :len(ids)] = torch.tensor(ids, dtype=torch.int32)
        plen[s] = prompt_len[s]
    buf = lambda t: SimpleNamespace(gpu=t)  # noqa: E731 (StagedWriteTensor / UvaBackedTensor)
    return LogitsProcRequestState(device=torch.device("cpu"), max_num_reqs=slots, vocab_size=V,
                                  all_token_ids=buf(all_ids),
                                  prompt_len=SimpleNamespace(np=plen, gpu=torch.from_numpy(plen)),
                                  prefill_len=SimpleNamespace(np=plen, gpu=torch.from_numpy(plen)),
                                  total_len=buf(torch.zeros(slots, dtype=torch.int32)))


def context(row_slots: list[int], pos: list[int], input_ids: list[int], local: list[int] | None = None,
            req_slots: list[int] | None = None):
    req_slots = row_slots if req_slots is None else req_slots
    t = lambda x: torch.tensor(x, dtype=torch.int64)  # noqa: E731
    return LogitsContext(expanded_idx_mapping=t(row_slots), idx_mapping=t(req_slots),
                         idx_mapping_np=np.array(req_slots), expanded_local_pos=t(local or [0] * len(row_slots)),
                         input_ids=t(input_ids), pos=t(pos),
                         seq_lens_upper_bound_np=np.array([p + 1 for p in pos]))


def test_newer_interface_rows_by_slot_with_history(logits):
    knobs = dict(repeat_penalty=2.0, repeat_last_n=-1)
    # slot 2: prompt [1, 2] + output [5] committed; slot 0: plain; slot 3: top-k 1
    rs = req_states({2: [1, 2, 5], 0: [4], 3: [6, 7]}, {2: 2, 0: 1, 3: 2})
    proc = LogitsProcessor(CFG, rs)
    assert not proc.older
    assert proc.add_request(2, ours(**knobs)) and not proc.add_request(0, VSP())
    assert proc.add_request(3, ours(top_k=1))
    proc.apply_staged_writes()
    # rows in a new order: row 0 = slot 3, row 1 = slot 0, row 2 = slot 2; each row's input token
    # is the newest one (the runner commits it to all_token_ids later)
    ctx = context([3, 0, 2], pos=[2, 1, 3], input_ids=[8, 9, 3])
    raw = logits.clone()
    out = proc.apply(logits.clone(), ctx)
    assert torch.equal(out[1], raw[1])
    assert torch.equal(out[0], expected(dict(top_k=1), raw[0], [6, 7, 8], step=1))
    p = dict(repetition_penalty=2.0, penalty_last_n=-1)
    assert torch.equal(out[2], expected(p, raw[2], [1, 2, 5, 3], step=2))
    # the slot is recycled for a plain request: its state is gone
    assert not proc.add_request(2, VSP())
    out = proc.apply(raw.clone(), ctx)
    assert torch.equal(out[2], raw[2])


def test_newer_interface_speculative_rows_see_their_drafts(logits):
    rs = req_states({1: [1, 2, 3]}, {1: 2})
    proc = LogitsProcessor(CFG, rs)
    proc.add_request(1, ours(repeat_penalty=3.0, repeat_last_n=-1))
    # one request, 3 rows: its input token 4 then draft tokens 10 and 11
    ctx = context([1, 1, 1], pos=[3, 4, 5], input_ids=[4, 10, 11], local=[0, 1, 2], req_slots=[1])
    raw = logits.clone()
    out = proc.apply(logits.clone(), ctx)
    p = dict(repetition_penalty=3.0, penalty_last_n=-1)
    for r, hist in enumerate([[1, 2, 3, 4], [1, 2, 3, 4, 10], [1, 2, 3, 4, 10, 11]]):
        assert torch.equal(out[r], expected(p, raw[r], hist, step=len(hist) - 2)), r


def test_newer_interface_mirostat_reads_the_chosen_token(logits):
    rs = req_states({0: [1, 2]}, {0: 2})
    proc = LogitsProcessor(CFG, rs)
    proc.add_request(0, ours(mirostat=1, mirostat_tau=2.0, mirostat_eta=0.3))
    out = proc.apply(logits[:1].clone(), context([0], pos=[1], input_ids=[2]))
    chosen = int(out[0].argmax())
    logq = torch.log_softmax(out[0], -1)
    rs.all_token_ids.gpu[0, 2] = 9  # (not the chosen one: the input token wins)
    proc.apply(logits[:1].clone(), context([0], pos=[2], input_ids=[chosen]))
    want = mirostat_update(torch.tensor(4.0), logq[chosen], mirostat_tau=2.0, mirostat_eta=0.3)
    assert float(proc.reqs[0].mu) == pytest.approx(float(want))
