"""temperance.eval.grid: --configs parsing, temperature crossing, families, YAML grids."""

import pytest

from temperance.errors import TemperanceError
from temperance.eval import grid


def test_parse_configs_alternatives_and_empty():
    bodies = grid.parse_configs("min_p=0.05|0.1, repeat_penalty=1.1; ; top_k=40")
    assert bodies == [{"min_p": 0.05, "repeat_penalty": 1.1}, {"min_p": 0.1, "repeat_penalty": 1.1}, {},
                      {"top_k": 40}]
    assert grid.parse_configs("") == [{}]           # an empty configuration is pure sampling
    assert grid.parse_configs("top_k=5; top_k=5") == [{"top_k": 5}]   # duplicates fold


@pytest.mark.parametrize("text, needle", [("min_p", "not knob=value"), ("=3", "no knob name"),
                                          ("top_k=1,top_k=2", "appears twice")])
def test_parse_configs_errors(text, needle):
    with pytest.raises(TemperanceError, match=needle):
        grid.parse_configs(text)


def test_expand_crosses_temperatures_only_where_unset():
    cs = grid.expand(grid.parse_configs("min_p=0.1; temperature=0; top_p=0.9,temp=0.7"), [1.0, 2.0])
    assert [(c.family, c.temperature) for c in cs] == [("min_p", 1.0), ("min_p", 2.0), ("greedy", 0.0),
                                                       ("top_p", 0.7)]
    assert cs[0].params.min_p == 0.1 and cs[1].params.temperature == 2.0
    assert cs[0].params.samplers == grid.TEMPERATURE_FIRST   # the eval's default order
    assert cs[0].params.samplers.index("temperature") < cs[0].params.samplers.index("min_p")


def test_expand_uses_the_request_parser():
    c = grid.expand([{"repeat_penalty": 1.2, "repeat_last_n": 16}], [1.0])[0]   # llama.cpp server names
    assert c.params.repetition_penalty == 1.2 and c.params.penalty_last_n == 16
    assert c.family == "penalties" and c.knobs == {"repetition_penalty": 1.2, "penalty_last_n": 16}
    c = grid.expand([{"preset": "vllm", "top_p": 0.9}], [1.5])[0]
    assert c.params.samplers[2] == "temperature" and c.label == "top_p=0.9 T=1.5"
    c = grid.expand([{"samplers": "top_k temperature", "top_k": 5}], [1.0])[0]
    assert c.params.samplers == ("top_k", "temperature")
    assert grid.expand([{"min_p": 0.05, "xtc_probability": 0.5}], [1.0])[0].family == "min_p+xtc"
    assert grid.expand([{"mirostat": 2}], [1.0])[0].family == "mirostat"


@pytest.mark.parametrize("body, needle", [({"top_p": 1.5}, "top_p must be in"),
                                          ({"seed": 3}, "may not set seed"),
                                          ({"bogus": 1}, "unknown field")])
def test_expand_errors_name_the_field(body, needle):
    with pytest.raises(TemperanceError, match=needle):
        grid.expand([body], [1.0])


def test_parse_floats():
    assert grid.parse_floats("0.7, 1,3") == [0.7, 1.0, 3.0]
    with pytest.raises(TemperanceError, match="--temperatures"):
        grid.parse_floats("1,x")
    with pytest.raises(TemperanceError, match=">= 0"):
        grid.parse_floats("-1")


def test_load_grid(tmp_path):
    f = tmp_path / "g.yaml"
    f.write_text("temperatures: [1, 2]\nconfigs:\n  - {}\n  - {min_p: [0.05, 0.1]}\n  - 'top_k=5|10'\n"
                 "samples: 3\n")
    g = grid.load_grid(str(f))
    assert g["temperatures"] == [1.0, 2.0] and g["samples"] == 3
    assert g["configs"] == [{}, {"min_p": 0.05}, {"min_p": 0.1}, {"top_k": 5}, {"top_k": 10}]
    f.write_text("configs: []\nmodle: x\n")
    with pytest.raises(TemperanceError, match="unknown key"):
        grid.load_grid(str(f))
    f.write_text("configs: [\n")
    with pytest.raises(TemperanceError, match="not valid YAML"):
        grid.load_grid(str(f))
