"""The model cache's integrity (issue 9 §6) and the CLI's checks before a model loads.

* The manifest records a sha256 per file; a file edited in place (same size) is caught by the
  cheap check on load and rebuilt; bit rot under an unchanged mtime is caught by
  ``temperance models verify``; weights holding NaN are rebuilt, not a permanent error.
* A killed conversion's temporary directory is swept by the next run.
* Every bad flag is reported (one line, exit 2) before the model loads.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest_runtime_helpers import hf_tokenizer, tiny_llama
from temperance import cli, models
from temperance.models import MANIFEST, cache_problem, ensure_cached, verify_cache

torch.set_num_threads(1)


def _build(calls):
    def build(out):
        calls.append(out)
        tiny_llama(vocab_size=262).save_pretrained(out)
        hf_tokenizer().save_pretrained(out)
        return {"source_sha256": "abc"}
    return build


def _bump_mtime(path, by_ns=10**9):
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + by_ns))


def test_manifest_holds_hashes_and_a_zeroed_tensor_is_rebuilt(tmp_path):
    calls = []
    dest = tmp_path / "tiny-0"
    ensure_cached(dest, _build(calls))
    info = json.loads((dest / MANIFEST).read_text())
    assert set(info["sha256"]) == set(info["files"]) and len(info["sha256"]["model.safetensors"]) == 64
    ref = load_file(dest / "model.safetensors")
    name = next(k for k in ref if k.endswith("q_proj.weight"))
    zeroed = dict(ref)
    zeroed[name] = torch.zeros_like(ref[name])  # one weight tensor zeroed: same size, wrong text
    save_file(zeroed, dest / "model.safetensors", metadata={"format": "pt"})
    _bump_mtime(dest / "model.safetensors")
    assert "model.safetensors changed since it was written" in cache_problem(dest)  # before: None
    model, _ = models._load_cached("tiny", dest, _build(calls), "fast")
    assert len(calls) == 2 and torch.equal(model.state_dict()[name], ref[name])
    assert cache_problem(dest) is None


def test_random_bytes_are_rebuilt_not_a_permanent_error(tmp_path):
    calls = []
    dest = tmp_path / "tiny-0"
    ensure_cached(dest, _build(calls))
    w = dest / "model.safetensors"
    raw = bytearray(w.read_bytes())
    g = torch.Generator().manual_seed(0)
    raw[len(raw) // 2:len(raw) // 2 + 4096] = bytes(torch.randint(0, 256, (4096,), generator=g).tolist())
    w.write_bytes(bytes(raw))
    _bump_mtime(w)
    model, _ = models._load_cached("tiny", dest, _build(calls), "fast")
    assert len(calls) == 2 and all(torch.isfinite(t).all() for t in model.state_dict().values())


def test_legacy_manifest_is_adopted_and_nan_weights_are_rebuilt(tmp_path):
    calls = []
    dest = tmp_path / "tiny-0"
    ensure_cached(dest, _build(calls))
    sd = load_file(dest / "model.safetensors")
    name = next(iter(sd))
    sd[name] = torch.full_like(sd[name], float("nan"))
    save_file(sd, dest / "model.safetensors", metadata={"format": "pt"})
    info = json.loads((dest / MANIFEST).read_text())  # a manifest from before hashes: sizes only
    info = {k: v for k, v in info.items() if k not in ("sha256", "stamp")}
    info["files"]["model.safetensors"] = (dest / "model.safetensors").stat().st_size
    (dest / MANIFEST).write_text(json.dumps(info))
    assert cache_problem(dest) is None and "sha256" in json.loads((dest / MANIFEST).read_text())
    model, _ = models._load_cached("tiny", dest, _build(calls), "fast")  # NaN weights: rebuilt
    assert len(calls) == 2 and torch.isfinite(model.state_dict()[name]).all()


def test_a_copy_is_restamped_and_bit_rot_is_found_by_verify(tmp_path):
    dest = tmp_path / "tiny-0"
    ensure_cached(dest, _build([]))
    w = dest / "model.safetensors"
    _bump_mtime(w)  # an intact copy with a new mtime: hashed once, then trusted again
    assert cache_problem(dest) is None
    stamp = json.loads((dest / MANIFEST).read_text())["stamp"]["model.safetensors"]
    assert stamp == [w.stat().st_size, w.stat().st_mtime_ns]
    st = w.stat()
    with open(w, "r+b") as f:  # bit rot: the content changes, the mtime does not
        f.seek(st.st_size // 2)
        b = f.read(1)
        f.seek(st.st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache_problem(dest) is None          # the cheap check trusts the stamp
    assert "changed since it was written" in verify_cache(dest)  # the full check does not


def test_leftover_of_a_killed_conversion_is_swept_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    name = "m-1"
    killed = tmp_path / f".{name}.tmp-{models._HOST}-{dead}-abc"       # its process is gone
    scratch = tmp_path / f".{name}.tmp-{models._HOST}-{dead}-abc.scratch-x"
    live = tmp_path / f".{name}.tmp-{models._HOST}-{os.getpid()}-def"   # a conversion running now
    other = tmp_path / f".{name}.tmp-otherhost-{dead}-ghi"             # another machine's: by age
    for d in (killed, scratch, live, other):
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"x" * 1000)
    calls = []
    ensure_cached(tmp_path / name, _build(calls))
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([live.name, other.name, name])  # before: kept for an hour


def test_load_sweeps_even_when_the_cache_is_built(tmp_path):
    dest = tmp_path / "tiny-0"
    ensure_cached(dest, _build([]))
    dead = tmp_path / f".tiny-0.tmp-{models._HOST}-999999999-zzz"
    dead.mkdir()
    models._load_cached("tiny", dest, _build([]), "fast")
    assert not dead.exists()


# -- the CLI --------------------------------------------------------------------------------------

def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_models_verify(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    spec = models.resolve("smollm2")
    if not models._installed(spec):
        pytest.skip("the smollm2 weights package is not installed")
    dest = models._cache_dir(spec.name, spec.key())
    ensure_cached(dest, _build([]))  # a stand-in for the converted model (tiny)
    code, out, _ = run(capsys, "models", "verify")
    assert code == 0 and "smollm2: ok" in out
    w = dest / "model.safetensors"
    st = w.stat()
    w.write_bytes(b"\0" * st.st_size)
    os.utime(w, ns=(st.st_atime_ns, st.st_mtime_ns))  # silent corruption
    code, out, _ = run(capsys, "models", "verify", "smollm2")
    assert code == 1 and "smollm2: CORRUPT" in out and "rebuilt on next use" in out
    assert not dest.exists()


@pytest.fixture()
def no_load(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("the model was loaded before the flags were checked")
    monkeypatch.setattr(models, "load", boom)
    monkeypatch.setattr(models, "load_model", boom)


@pytest.mark.parametrize("argv, message", [
    (["generate", "--threads", "0", "hi"], "--threads must be an integer >= 1, got 0"),
    (["generate", "--max-tokens", "0", "hi"], "--max-tokens must be an integer >= 1, got 0"),
    (["generate", "-n", "0", "hi"], "-n must be an integer >= 1, got 0"),
    (["generate", "--min-tokens", "-1", "hi"], "--min-tokens must be an integer >= 0"),
    (["generate", "--stop", "", "hi"], "--stop must not be empty"),
    (["generate", "--json-schema", "/no/such/schema.json", "hi"], "cannot read /no/such/schema.json"),
    (["generate", "--grammar", "/no/such/g.lark", "hi"], "cannot read /no/such/g.lark"),
    (["generate", "--ban-phrases", "/no/such/bans.txt", "hi"], "cannot read ban-phrases file"),
    (["generate", "--regex", "a", "--choices", "a,b", "hi"], "give at most one of"),
    (["generate", "--beams", "0", "hi"], "beams must be an integer >= 1, got 0"),
    (["generate", "--beams", "2", "--num-return-sequences", "3", "hi"], "num_return_sequences must be in [1, beams=2]"),
    (["generate", "--beams", "4", "--diverse-groups", "3", "hi"], "must divide beams"),
    (["generate", "--beams", "2", "--contrastive", "0.5", "hi"], "give --beams or --contrastive, not both"),
    (["generate", "--contrastive", "2", "hi"], "--contrastive must be in [0, 1]"),
    (["generate", "--mbr", "0", "hi"], "--mbr must be an integer >= 1, got 0"),
    (["generate", "--best-of", "0", "hi"], "--best-of must be an integer >= 1, got 0"),
    (["generate", "--mbr", "2", "--best-of", "2", "hi"], "give --mbr or --best-of, not both"),
    (["generate", "--smoothing-factor", "1e308", "hi"], "smoothing_factor must be in [0, 1e30]"),
    (["generate", "--logit-bias", "5+1e308", "hi"], "logit_bias[5] must be in [-1e30, 1e30]"),
    (["generate", "--temp", "1e31", "hi"], "temperature must be in [0, 1e30]"),
    (["inspect", "--prompt", "hi", "--threads", "0"], "--threads must be an integer >= 1"),
])
def test_flag_errors_come_before_the_model_loads(capsys, no_load, argv, message):
    code, out, err = run(capsys, *argv)
    assert code == 2 and err.startswith("temperance: error:") and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_bad_model_paths_are_one_line_errors(capsys, tmp_path, no_load):
    empty = tmp_path / "empty"
    empty.mkdir()
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(os.urandom(4096))
    for model, message in ((str(empty), "is not a Hugging Face model directory"),
                           (str(garbage), "is not a GGUF file"),
                           (str(tmp_path / "missing"), "no model directory or .gguf file")):
        code, _, err = run(capsys, "generate", "--model", model, "hi")
        assert code == 2 and message in err and "Traceback" not in err, err


def test_bad_models_when_loaded_anyway_are_model_errors(tmp_path):
    # the library path (not the CLI) gives a ModelError too, never a transformers traceback
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(models.ModelError, match="not a Hugging Face model directory that loads"):
        models.load_model(str(empty))


def test_an_unexpected_error_is_one_line_not_a_traceback(capsys, monkeypatch):
    def broken(args):
        raise RuntimeError("value cannot be converted to type float without overflow")
    monkeypatch.setattr(cli, "cmd_models", broken)
    monkeypatch.delenv("TEMPERANCE_DEBUG", raising=False)
    parser = cli.build_parser
    monkeypatch.setattr(cli, "build_parser", lambda: _with(parser(), broken))
    code, _, err = run(capsys, "models")
    assert code == 1 and err.count("\n") == 1 and "internal error: RuntimeError" in err
    monkeypatch.setenv("TEMPERANCE_DEBUG", "1")
    with pytest.raises(RuntimeError):
        cli.main(["models"])


def _with(parser, func):
    parser._subparsers._group_actions[0].choices["models"].set_defaults(func=func)
    return parser


def test_serve_port_is_checked_before_loading(capsys, no_load):
    pytest.importorskip("fastapi")
    pytest.importorskip("uvicorn")
    code, _, err = run(capsys, "serve", "--port", "70000")
    assert code == 2 and "--port must be in [0, 65535], got 70000" in err
