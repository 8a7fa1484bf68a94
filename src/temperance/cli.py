"""The ``temperance`` command line.

    temperance inspect --demo --min-p 0.1 --temp 3     # how each sampler reshapes a distribution

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


def params_from_args(args: argparse.Namespace) -> SamplingParams:
    """The one place CLI flags become SamplingParams."""
    kw = {f: getattr(args, f) for f, _ in SAMPLER_FLAGS.values() if getattr(args, f) is not None}
    if args.samplers is not None:
        kw["samplers"] = args.samplers
    if args.dry_sequence_breakers is not None:
        kw["dry_sequence_breakers"] = tuple(args.dry_sequence_breakers)
    if args.logit_bias:
        kw["logit_bias"] = dict(_parse_bias(b) for b in args.logit_bias)
    return SamplingParams(**kw)


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
    from rich.table import Table

    from . import demo
    from .batch import Batch
    from .chain import Chain

    if not args.demo:
        raise TemperanceError("inspect needs --demo (a prompt on a real model comes with `generate`)")
    params = params_from_args(args)
    logits, names = demo.logits(), demo.tokens()
    batch = Batch(params, history=[demo.HISTORY], dry_breakers=[[]])
    chain = Chain(params)
    stages = [("input", logits)] + chain.stages(logits, batch)
    probs = [torch.softmax(x[0], -1) for _, x in stages]
    active = " → ".join(name for name, _ in stages[1:]) or "(no sampler active)"
    table = Table(title=f'Next token after "{demo.PROMPT}"\nchain: {active} → pick',
                  title_justify="left")
    table.add_column("rank", justify="right")
    table.add_column("token")
    for name, _ in stages:
        table.add_column(name, justify="right")
    for rank in range(args.rows):
        cells = [f"{p[rank].item():.3f}" if p[rank] > 0 else "·" for p in probs]
        table.add_row(str(rank + 1), repr(names[rank]), *cells)
    rest = [p[args.rows:].sum().item() for p in probs]
    table.add_row("", f"({len(names) - args.rows} others)", *[f"{r:.3f}" if r > 0 else "·" for r in rest])
    table.add_section()
    table.add_row("", "kept", *[str(int((p > 0).sum())) for p in probs])
    table.add_row("", "entropy (bits)", *[f"{_entropy_bits(p):.2f}" for p in probs])
    Console().print(table)
    if params.temperature == 0:
        Console().print("temperature 0: greedy, the first row is chosen")
    return 0


def _entropy_bits(p: torch.Tensor) -> float:
    nz = p[p > 0].double()
    return float(-(nz * nz.log()).sum() / math.log(2))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="temperance", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("inspect", help="show each sampler's effect on a next-token distribution")
    p.add_argument("--demo", action="store_true", help="use the built-in example distribution")
    p.add_argument("--rows", type=int, default=10, help="candidates to show (default 10)")
    add_sampler_flags(p)
    p.set_defaults(func=cmd_inspect)
    return parser




def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except TemperanceError as e:
        print(f"temperance: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
