"""TemperanceLM: lm-eval's generative tasks through temperance's samplers, on a local JSON task (no hub).
Skips where lm-eval (the optional `lmeval` extra) is not installed."""

import pytest

pytestmark = pytest.mark.slow   # lm-eval's task loading costs seconds per evaluation
pytest.importorskip("lm_eval", reason="lm-eval is optional: pip install 'temperance[lmeval]'")

from eval_helpers import tiny_model_dir, tiny_runtime  # noqa: E402
from temperance.cli import main  # noqa: E402
from temperance.errors import TemperanceError  # noqa: E402
from temperance.eval import lmeval  # noqa: E402
from temperance.generate import generate_text  # noqa: E402
from temperance.params import SamplingParams  # noqa: E402

QUESTIONS = [("What is the capital of France?", "Paris"), ("What is 2 + 2?", "4"), ("What color is grass?", "green")]


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("tasks")
    import json
    (d / "data.jsonl").write_text("".join(json.dumps({"question": q, "answer": a}) + "\n" for q, a in QUESTIONS))
    (d / "task.yaml").write_text(f"""task: temperance_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {d / 'data.jsonl'}
test_split: test
output_type: generate_until
doc_to_text: "{{{{question}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 4
  do_sample: false
metric_list:
  - metric: exact_match
""")
    return str(d)


def _resps(res):
    return [s["resps"][0][0] for s in sorted(res["samples"]["temperance_local"], key=lambda s: s["doc_id"])]


def test_greedy_and_gen_kwargs_reach_the_sampler(task_dir):
    rt = tiny_runtime()
    run = lambda **kw: lmeval.evaluate(rt, ["temperance_local"], include_path=task_dir, log_samples=True, **kw)  # noqa: E731
    greedy = run()
    assert "exact_match,none" in greedy["results"]["temperance_local"]
    ours = generate_text(rt, [q for q, _ in QUESTIONS], SamplingParams(temperature=0), max_tokens=4, stop=["\n"])
    assert _resps(greedy) == [c[0].text for c in ours]
    # min_p = 1 keeps only the most likely token: sampling at T = 2 is then greedy again
    assert _resps(run(gen_kwargs="do_sample=True,temperature=2,min_p=1.0")) == _resps(greedy)
    hot = run(gen_kwargs="do_sample=True,temperature=2")
    assert _resps(hot) != _resps(greedy)
    base = lmeval.evaluate(rt, ["temperance_local"], include_path=task_dir, log_samples=True,
                           base={"min_p": 1.0}, gen_kwargs="do_sample=True,temperature=2")
    assert _resps(base) == _resps(greedy)                  # the adapter's base configuration applies
    with pytest.raises(TemperanceError, match="top_p must be in"):
        run(gen_kwargs="do_sample=True,top_p=2")


def test_cli(task_dir, tmp_path, capsys):
    d = tiny_model_dir(tmp_path)
    out = tmp_path / "res.json"
    assert main(["eval", "lm-eval", "--model", d, "--include-path", task_dir, "--tasks", "temperance_local",
                 "--configs", "min_p=0.1", "--gen-kwargs", "do_sample=True,temperature=1.5", "--out", str(out)]) == 0
    assert "exact_match" in out.read_text() and "temperance_local" in capsys.readouterr().out
    assert main(["eval", "lm-eval", "--model", d, "--tasks", "x", "--configs", "top_k=1; top_k=2"]) == 2
