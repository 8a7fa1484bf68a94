"""The Ray Data recipe (temperance.ray_batch) on a local Ray: 127.0.0.1 only, telemetry off.

Skipped where Ray is not installed (`pip install "temperance[ray]"`). The model is a tiny random
Llama with a byte-level tokenizer saved to a temporary directory (loaded by path in each actor).
What is checked: every row equals temperance's own `generate_text` on that row alone (the chain
is ours, whatever actor or batch the row lands in), seeded runs repeat, per-row knobs and limits
act, a bad knob fails the job naming it.
"""

from __future__ import annotations

import json
import os

import pytest

from temperance.ray_batch import LOCAL_ENV

os.environ.update(LOCAL_ENV)  # before `import ray`: loopback only, no usage statistics
ray = pytest.importorskip("ray")
pytest.importorskip("ray.data")

from conftest_runtime_helpers import byte_level_tokenizer, tiny_llama  # noqa: E402

from temperance.generate import generate_text  # noqa: E402
from temperance.models import load  # noqa: E402
from temperance.request import GenOptions, params_from_request  # noqa: E402
from temperance.ray_batch import generate_dataset, init_local  # noqa: E402

PROMPTS = ["hello world", "hello there", "the cat", "a b c"]
ROWS = [
    {"min_p": 0.1, "temperature": 1.5, "seed": 1},
    {"temperature": 0, "max_tokens": 3},
    {"top_n_sigma": 1.0, "xtc_probability": 0.5, "seed": 2, "logit_bias": {"100": False}},
    {"repeat_penalty": 1.3, "dry_multiplier": 0.8, "dry_sequence_breakers": [], "seed": 3, "stop": ["e"]},
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from transformers import PreTrainedTokenizerFast

    d = tmp_path_factory.mktemp("tiny")
    tiny_llama().save_pretrained(d)
    PreTrainedTokenizerFast(tokenizer_object=byte_level_tokenizer(), eos_token="<|im_end|>").save_pretrained(d)
    return str(d)


@pytest.fixture(scope="module")
def local_ray():
    init_local(num_cpus=2, log_to_driver=False)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    assert ray.util.get_node_ip_address() == "127.0.0.1"
    yield
    ray.shutdown()


def dataset(rows):
    return ray.data.from_items([{"id": i, "prompt": PROMPTS[i % 4], "params": json.dumps(r)}
                                for i, r in enumerate(rows)])


def run(model_dir, rows, **kw):
    out = generate_dataset(dataset(rows), model=model_dir, actors=2, batch_size=2, max_tokens=8, **kw)
    return sorted(out.take_all(), key=lambda r: r["id"])


def test_rows_match_our_own_loop_and_repeat(model_dir, local_ray):
    rows = ROWS * 2  # 8 rows, 4 batches over 2 actors
    a, b = run(model_dir, rows), run(model_dir, rows)
    assert [r["text"] for r in a] == [r["text"] for r in b]
    rt = load(model_dir, threads=1)
    for r in a:
        p, o = params_from_request(ROWS[r["id"] % 4], defaults=GenOptions(max_tokens=8))
        want = generate_text(rt, [PROMPTS[r["id"] % 4]], p, max_tokens=o.max_tokens, stop=o.stop)[0][0]
        assert (r["text"], list(r["tokens"]), r["finish_reason"]) == (want.text, want.tokens, want.finish_reason), r
    assert len(a[1]["tokens"]) <= 3 and all(100 not in r["tokens"] for r in a[2::4])


def test_bad_knob_fails_the_job_naming_it(model_dir, local_ray):
    with pytest.raises(Exception, match=r"row 0 .*min_p must be in \[0, 1\]"):
        run(model_dir, [{"min_p": 3}])
