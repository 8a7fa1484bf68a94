"""The ``temperance`` command line.

    temperance inspect --demo --min-p 0.1 --temp 3     # how each sampler reshapes a distribution
    temperance inspect --prompt "The capital of France is" --top-k 5 --steps 3
    temperance generate --temp 0.8 --min-p 0.1 -n 2 "Once upon a time"
    temperance models [prepare NAME]

Flag names follow llama.cpp's CLI where it has one (``--temp``, ``--top-k``, ``--top-p``,
``--min-p``, ``--top-nsigma``, ``--typical``, ``--repeat-penalty``, ``--samplers``, ...). Bad input
prints one line naming the problem and exits with status 2, never a stack trace.
"""

from __future__ import annotations

import argparse
import math
import sys
from typing import Sequence

import torch

from .errors import TemperanceError
from .models import ModelError
from .params import PRESETS, SamplingParams

# flag → SamplingParams field (llama.cpp's names where it has one)
SAMPLER_FLAGS: dict[str, tuple[str, type]] = {
    "--temp": ("temperature", float), "--dynatemp-range": ("dynatemp_range", float),
    "--dynatemp-exp": ("dynatemp_exponent", float), "--smoothing-factor": ("smoothing_factor", float),
    "--smoothing-curve": ("smoothing_curve", float), "--top-k": ("top_k", int),
    "--top-p": ("top_p", float), "--min-p": ("min_p", float), "--top-nsigma": ("top_n_sigma", float),
    "--typical": ("typical_p", float), "--tfs": ("tfs_z", float), "--top-a": ("top_a", float),
    "--epsilon-cutoff": ("epsilon_cutoff", float), "--eta-cutoff": ("eta_cutoff", float),
    "--xtc-probability": ("xtc_probability", float), "--xtc-threshold": ("xtc_threshold", float),
    "--repeat-penalty": ("repetition_penalty", float), "--frequency-penalty": ("frequency_penalty", float),
    "--presence-penalty": ("presence_penalty", float), "--repeat-last-n": ("penalty_last_n", int),
    "--dry-multiplier": ("dry_multiplier", float), "--dry-base": ("dry_base", float),
    "--dry-allowed-length": ("dry_allowed_length", int), "--dry-penalty-last-n": ("dry_penalty_last_n", int),
    "--no-repeat-ngram-size": ("no_repeat_ngram_size", int), "--mirostat": ("mirostat", int),
    "--mirostat-ent": ("mirostat_tau", float), "--mirostat-lr": ("mirostat_eta", float),
    "--seed": ("seed", int),
}


def add_sampler_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("samplers (llama.cpp flag names)")
    for flag, (field, typ) in SAMPLER_FLAGS.items():
        g.add_argument(flag, dest=field, type=typ, default=None, metavar=typ.__name__.upper())
    g.add_argument("--samplers", default=None,
                   help=f"sampler order: names separated by ',' or ';', or a preset ({', '.join(PRESETS)})")
    g.add_argument("--dry-sequence-breaker", dest="dry_sequence_breakers", action="append",
                   default=None, metavar="STR", help="repeatable; replaces the default breakers")
    g.add_argument("--logit-bias", "-l", action="append", default=None, metavar="ID(+/-)BIAS",
                   help="e.g. 15043+1 or 15043-inf (repeatable)")


# SamplingParams field → llama.cpp server name, where they differ
_REQUEST_NAMES = {"repetition_penalty": "repeat_penalty", "penalty_last_n": "repeat_last_n"}


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    """CLI flags → a request dict with llama.cpp server names → `request.params_from_request`
    (the one place a request becomes SamplingParams, shared with the server)."""
    from .request import params_from_request

    body = {_REQUEST_NAMES.get(f, f): getattr(args, f) for f, _ in SAMPLER_FLAGS.values()
            if getattr(args, f) is not None}
    if args.samplers is not None:
        body["samplers"] = args.samplers
    if args.dry_sequence_breakers is not None:
        body["dry_sequence_breakers"] = list(args.dry_sequence_breakers)
    if args.logit_bias:
        body["logit_bias"] = dict(_parse_bias(b) for b in args.logit_bias)
    return params_from_request(body)[0]


def _parse_bias(text: str) -> tuple[int, float]:
    for i, ch in enumerate(text[1:], 1):
        if ch in "+-":
            try:
                return int(text[:i]), float(text[i:])
            except ValueError:
                break
    raise TemperanceError(f"--logit-bias must look like TOKEN_ID+BIAS or TOKEN_ID-BIAS, got {text!r}")


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
    table = Table(title=f"{title}\nchain: {active} → pick", title_justify="left")
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
    runtime = models.load(args.model, threads=args.threads)
    tok = runtime.tokenizer
    ids = encode_prompts(tok, [args.prompt], chat=args.chat, max_context=runtime.max_context)[0]
    texts = tok.token_texts()
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
        text += texts[t] if t < len(texts) else ""
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
    runtime = models.load(args.model, threads=args.threads)
    from . import mbr, search

    if search.search_requested(args):  # beam family / contrastive: whole sequences, no streaming
        for r, texts in enumerate(search.run_search_from_args(args, runtime, prompts, params)):
            for s, text in enumerate(texts):
                print(json.dumps({"request": r, "sample": s, "prompt": prompts[r], "text": text},
                                 ensure_ascii=False) if args.json else f"--- prompt {r}, sequence {s} ---\n{text}")
        return 0
    kw = dict(max_tokens=args.max_tokens, min_tokens=args.min_tokens, n=args.n,
              stop=tuple(args.stop or ()), chat=args.chat)
    if args.mbr is not None or args.best_of is not None:  # draw N, keep the best by utility/score
        explicit = any(getattr(args, f) is not None for f, _ in SAMPLER_FLAGS.values() if f != "seed")
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
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from . import models

    if args.action == "prepare":
        if not args.name:
            raise TemperanceError("models prepare needs a NAME")
        models.load_model(args.name)
        print(f"{args.name}: ready")
        return 0
    if args.action not in (None, "list"):
        raise TemperanceError(f"unknown models action {args.action!r}; use 'list' or 'prepare NAME'")
    print(f"{'name':<14} {'installed':<10} {'cached':<7} description")
    for m in models.list_models():
        print(f"{m.name:<14} {'yes' if m.installed else 'no':<10} {'yes' if m.cached else 'no':<7} "
              f"{m.description}")
        if not m.installed:
            print(f"{'':<14} install: {m.install}")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from .server import serve
        import fastapi, uvicorn  # noqa: F401
    except ImportError as e:
        raise TemperanceError(f"serve needs fastapi and uvicorn: pip install 'temperance[serve]' ({e})")
    for name in ("max_tokens_cap", "max_prompt_tokens", "max_n", "max_batch", "max_queue", "max_body_bytes"):
        if getattr(args, name) < 1:
            raise TemperanceError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    serve(args.model, args.host, args.port, args.threads, max_tokens_cap=args.max_tokens_cap,
          max_prompt_tokens=args.max_prompt_tokens, max_n=args.max_n, max_batch=args.max_batch,
          max_queue=args.max_queue, max_body_bytes=args.max_body_bytes)
    return 0


def _entropy_bits(p: torch.Tensor) -> float:
    nz = p[p > 0].double()
    return float(-(nz * nz.log()).sum() / math.log(2))


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    from .runtime import default_threads

    p.add_argument("--model", default="smollm2", help="model name or path (default smollm2)")
    p.add_argument("--threads", type=int, default=default_threads(),
                   help=f"torch threads (default {default_threads()})")
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

    p = sub.add_parser("models", help="list models, or `models prepare NAME` to convert one")
    p.add_argument("action", nargs="?", default=None, help="list (default) or prepare")
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


if __name__ == "__main__":
    sys.exit(main())
