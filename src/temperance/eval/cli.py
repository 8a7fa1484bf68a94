"""``temperance eval``: score, generate, calm, report (argparse; registered by `temperance.cli`).

    temperance eval score --configs "min_p=0.1; top_p=0.9; top_n_sigma=1; " --temperatures 0.1,1,10
    temperance eval generate --tasks easy,stories --configs "; min_p=0.1; temperature=0" \\
        --temperatures 1,2,3 --samples 4 --max-tokens 32 --chat --seeds 2 --out eval-out
    temperance eval generate --grid grid.yaml          # the same options in a file
    temperance eval calm --out eval-out                # CALM's N sweep against softmax T
    temperance eval report eval-out                    # rebuild the report from the cells alone
    temperance eval lm-eval --include-path DIR --tasks T --configs "min_p=0.1" --gen-kwargs "temperature=1.5"
    temperance eval score --quick; temperance eval generate --quick   # CI presets (< 5 min each)

Precedence: a flag on the command line, then the ``--grid`` file, then ``--quick``, then the
defaults. The sampler flags of ``temperance generate`` (``--repeat-penalty 1.1`` ...) set base
knobs under every configuration (a configuration's own value wins); ``--seed`` is the base seed of
the common random numbers and ``--samplers`` the order of configurations that set none.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from ..errors import TemperanceError
from . import grid as grid_mod

__all__ = ["add_parser", "cmd_score", "cmd_generate", "cmd_report", "cmd_calm", "cmd_lm_eval", "QUICK"]

QUICK = {
    "score": {"configs": grid_mod.QUICK_CONFIGS, "temperatures": "0.1,0.5,1,2,10", "positions": 512,
              "window": 128},
    "generate": {"configs": grid_mod.QUICK_CONFIGS, "temperatures": "1,3", "tasks": "easy,stories",
                 "limit": 8, "samples": 4, "max_tokens": 16, "seeds": 1, "chat": True},
    "calm": {"positions": 256, "window": 128, "batches": 16},
}
DEFAULTS = {
    "score": {"configs": grid_mod.QUICK_CONFIGS, "temperatures": "0.1,0.5,1,2,10", "positions": 8192,
              "window": 256, "text": "auto", "workers": 1, "out": "eval-out"},
    "generate": {"configs": grid_mod.QUICK_CONFIGS, "temperatures": "0.7,1,1.5,2,3", "tasks": "easy,stories",
                 "limit": None, "samples": 4, "max_tokens": 32, "seeds": 1, "chat": False, "workers": 1,
                 "out": "eval-out"},
    "calm": {"positions": 1024, "window": 256, "text": "auto", "batches": 32, "out": "eval-out"},
}


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``eval`` and its subcommands on `temperance`'s subparsers."""
    from ..cli import _add_model_flags, add_sampler_flags

    p = subparsers.add_parser("eval", help="measure samplers: exact scoring, generation metrics, the protocol",
                              description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="eval_command", required=True)

    def common(q: argparse.ArgumentParser) -> None:
        q.add_argument("--configs", default=None, help="configurations: 'knob=v,knob=v; ...' (server names; "
                       "'a|b' expands; an empty one is pure sampling)")
        q.add_argument("--temperatures", default=None, help="e.g. 0.7,1,2,3: for configurations without their own")
        q.add_argument("--grid", default=None, metavar="FILE.yaml", help="the grid options in a YAML file")
        q.add_argument("--out", default=None, metavar="DIR", help="run folder (cells, rows, report); default eval-out")
        q.add_argument("--workers", type=int, default=None, help="local worker processes (0 = in process; default 1)")
        q.add_argument("--ray", nargs="?", const=True, default=None, metavar="ADDRESS",
                       help="run cells on Ray: a local ray.init(), or the cluster at ADDRESS")
        q.add_argument("--quick", action="store_true", help="the small CI preset (under 5 minutes)")
        q.add_argument("--no-report", action="store_true", help="run the cells only")
        _add_model_flags(q)
        add_sampler_flags(q)
        q.set_defaults(threads=1)

    q = sub.add_parser("score", help="exact teacher-forced scoring of every configuration on held-out text")
    common(q)
    q.add_argument("--text", default=None, help="held-out text: auto (gsm8k if installed, else project), gsm8k, project, or a text file")
    q.add_argument("--positions", type=int, default=None, help="scored positions (default 8192)")
    q.add_argument("--window", type=int, default=None, help="positions per window (default 256)")
    q.set_defaults(func=cmd_score)

    q = sub.add_parser("generate", help="k samples per prompt and configuration; quality and diversity")
    common(q)
    q.add_argument("--tasks", default=None, help="easy, stories, gsm8k or FILE.jsonl, separated by ','")
    q.add_argument("--samples", type=int, default=None, help="samples per prompt, k (default 4)")
    q.add_argument("--max-tokens", type=int, default=None, help="most tokens per sample (default 32)")
    q.add_argument("--seeds", type=int, default=None, help="seed blocks (default 1)")
    q.add_argument("--limit", type=int, default=None, help="first N prompts of each task")
    q.add_argument("--no-embeddings", action="store_true", help="skip the MiniLM diversity metrics")
    q.add_argument("--judge", default=None, metavar="MODEL",
                   help="a second model (name or path): each sample's NLL under it (judge_nll)")
    q.set_defaults(func=cmd_generate)

    q = sub.add_parser("calm", help="CALM's likelihood-free temperature: accuracy/collision over N vs softmax T")
    q.add_argument("--text", default=None, help="held-out text: auto (gsm8k if installed, else project), gsm8k, project, or a text file")
    q.add_argument("--positions", type=int, default=None, help="scored positions (default 1024)")
    q.add_argument("--window", type=int, default=None, help="positions per window (default 256)")
    q.add_argument("--batches", type=int, default=None, help="Monte Carlo batches per position (default 32)")
    q.add_argument("--out", default=None, metavar="DIR", help="run folder (default eval-out)")
    q.add_argument("--quick", action="store_true", help="the small CI preset")
    q.add_argument("--no-report", action="store_true", help="write calm.json only")
    _add_model_flags(q)
    q.set_defaults(func=cmd_calm, threads=1)

    q = sub.add_parser("lm-eval", help="lm-evaluation-harness tasks with temperance's samplers (TemperanceLM)")
    q.add_argument("--tasks", required=True, help="lm-eval task names, separated by ','")
    q.add_argument("--include-path", default=None, metavar="DIR", help="folder of local task YAMLs")
    q.add_argument("--configs", default=None, help="ONE configuration: the base knobs (server names)")
    q.add_argument("--gen-kwargs", default=None, help="lm-eval's k=v,k=v (override the tasks' and the base)")
    q.add_argument("--limit", type=float, default=None, help="documents per task (or a fraction)")
    q.add_argument("--seed", type=int, default=0, help="base seed (default 0)")
    q.add_argument("--out", default=None, metavar="FILE.json", help="write the results here")
    _add_model_flags(q)
    q.set_defaults(func=cmd_lm_eval, threads=1)

    q = sub.add_parser("report", help="rebuild rows, figures and report.html from a run folder's cells")
    q.add_argument("out", nargs="?", default="eval-out", help="run folder (default eval-out)")
    q.set_defaults(func=cmd_report)
    return p


# -- options ---------------------------------------------------------------------------------------


def _options(args: argparse.Namespace, kind: str) -> dict:
    """Flags over the grid file over --quick over the defaults."""
    opts = dict(DEFAULTS[kind])
    if getattr(args, "quick", False):
        opts.update(QUICK[kind])
    if getattr(args, "grid", None):
        g = grid_mod.load_grid(args.grid)
        opts.update({k: v for k, v in g.items() if v is not None})
    for k in ("configs", "temperatures", "out", "workers", "text", "positions", "window", "tasks",
              "samples", "max_tokens", "seeds", "limit", "batches", "judge"):
        v = getattr(args, k, None)
        if v is not None:
            opts[k] = v
    if getattr(args, "chat", False):
        opts["chat"] = True
    for k in ("positions", "window", "samples", "max_tokens", "seeds", "batches"):
        if k in opts and opts[k] is not None and (isinstance(opts[k], bool) or not isinstance(opts[k], int)
                                                   or opts[k] < 1):
            raise TemperanceError(f"--{k.replace('_', '-')} must be an integer >= 1, got {opts[k]!r}")
    if opts.get("workers") is not None and opts["workers"] < 0:
        raise TemperanceError(f"--workers must be >= 0, got {opts['workers']}")
    if opts.get("limit") is not None and opts["limit"] < 1:
        raise TemperanceError(f"--limit must be >= 1, got {opts['limit']}")
    return opts


def _configs(args: argparse.Namespace, opts: dict) -> list:
    """Expand the grid, with the sampler flags as base knobs under every configuration."""
    from ..params import FIELDS

    if getattr(args, "temperature", None) is not None:
        raise TemperanceError("--temp does not apply to eval: give --temperatures (or temperature= in a configuration)")
    base = {}
    for k in FIELDS.values():  # the sampler flags, as each stage declares them
        v = getattr(args, k.name, None)
        if v is not None and k.name != "temperature":
            base[k.name] = k.parse_flag(v) if k.parse_flag else v
    cfgs = opts["configs"]
    bodies = grid_mod.parse_configs(cfgs) if isinstance(cfgs, str) else list(cfgs)
    from ..request import LLAMA_NAMES
    bodies = [{**{k: v for k, v in base.items()
                  if k not in {LLAMA_NAMES.get(b, b) for b in body}}, **body} for body in bodies]
    temps = grid_mod.parse_floats(opts.get("temperatures"))
    order = getattr(args, "samplers", None) or opts.get("samplers") or "temperature-first"
    return grid_mod.expand(bodies, temps, order)


def _run(jobs: list, total: int, opts: dict, args: argparse.Namespace, label: str) -> None:
    from .cells import Store, run_jobs

    store = Store(opts["out"])
    todo = sum(len(j["cells"]) if "cells" in j else 1 for j in jobs)
    print(f"temperance eval: {total} cells in the grid, {total - todo} already done, {todo} to run "
          f"-> {Path(opts['out']) / 'cells'}")
    t0 = time.perf_counter()
    run_jobs(jobs, store, workers=opts.get("workers", 1) if opts.get("workers") is not None else 1,
             ray=getattr(args, "ray", None), threads=args.threads or 1, label=label)
    print(f"temperance eval: {todo} cells in {time.perf_counter() - t0:.0f} s")


def _finish(opts: dict, args: argparse.Namespace) -> int:
    if getattr(args, "no_report", False):
        return 0
    from .report import build_report

    res = build_report(opts["out"])
    print(f"temperance eval: {res['n_rows']} rows -> {res['rows']}; report -> {res['report']}")
    for name, t in res["trends"].items():
        print(f"  {name}: {t['verdict']}")
    return 0


def _runtime(args: argparse.Namespace):
    from .. import models
    from .cells import _RUNTIMES, register_runtime

    if args.model not in _RUNTIMES:
        register_runtime(args.model, models.load(args.model, threads=args.threads))
    return _RUNTIMES[args.model]


# -- commands --------------------------------------------------------------------------------------


def cmd_score(args: argparse.Namespace) -> int:
    from .cells import Store
    from .data import heldout_text
    from .plan import plan_score
    from .score import make_windows

    if args.chat:
        raise TemperanceError("--chat has no meaning for eval score (teacher-forced plain text)")
    opts = _options(args, "score")
    if opts.get("judge"):
        raise TemperanceError("judge has no meaning for eval score (it scores generated samples); "
                              "use it with eval generate")
    configs = _configs(args, opts)
    rt = _runtime(args)
    windows = make_windows(rt.tokenizer, heldout_text(opts["text"]), opts["window"], opts["positions"])
    from .data import resolve_text

    text = resolve_text(opts["text"])
    source = text if text in ("gsm8k", "project") else Path(text).name
    jobs, total = plan_score(args.model, windows, configs, store=Store(opts["out"]), source=source)
    _run(jobs, total, opts, args, "score")
    return _finish(opts, args)


def cmd_generate(args: argparse.Namespace) -> int:
    from .cells import Store
    from .data import load_tasks
    from .plan import plan_generate

    opts = _options(args, "generate")
    configs = _configs(args, opts)
    if opts.get("judge"):
        from ..cli import check_model_name
        check_model_name(opts["judge"])  # before hours of generation, not after
    tasks = [t.head(opts.get("limit")) for t in load_tasks(opts["tasks"])]
    jobs, total = plan_generate(args.model, tasks, configs, samples=opts["samples"],
                                max_tokens=opts["max_tokens"], chat=bool(opts.get("chat")),
                                seeds=opts["seeds"], base_seed=args.seed or 0, store=Store(opts["out"]),
                                embeddings=not args.no_embeddings, judge=opts.get("judge"))
    if (opts.get("workers") or 0) == 0 and jobs:
        _runtime(args)
    _run(jobs, total, opts, args, "generate")
    return _finish(opts, args)


def cmd_calm(args: argparse.Namespace) -> int:
    from .calm import run_calm
    from .data import heldout_text
    from .score import make_windows

    opts = _options(args, "calm")
    rt = _runtime(args)
    windows = make_windows(rt.tokenizer, heldout_text(opts["text"]), opts["window"], opts["positions"])
    t0 = time.perf_counter()
    res = run_calm(rt, windows, batches=opts["batches"], out=opts["out"], progress=True)
    print(f"temperance eval calm: {len(res['points'])} points in {time.perf_counter() - t0:.0f} s "
          f"-> {Path(opts['out']) / 'calm.json'}")
    print(f"  trend: {res['trend']['verdict']}")
    return _finish(opts, args)


def cmd_lm_eval(args: argparse.Namespace) -> int:
    import json

    from .lmeval import evaluate

    base = grid_mod.parse_configs(args.configs) if args.configs else [{}]
    if len(base) != 1:
        raise TemperanceError(f"eval lm-eval takes one configuration in --configs, got {len(base)}")
    res = evaluate(_runtime(args), [t.strip() for t in args.tasks.split(",") if t.strip()],
                   include_path=args.include_path, base=base[0], gen_kwargs=args.gen_kwargs, limit=args.limit,
                   seed=args.seed, chat=args.chat)
    if res is None:
        raise TemperanceError("lm-eval returned no results")
    for task, r in res["results"].items():
        print(task, {k: (float(v) if hasattr(v, "item") else v) for k, v in r.items() if k not in ("name", "alias")})
    if args.out:
        Path(args.out).write_text(json.dumps(res["results"], indent=1, default=float))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import build_report

    if not (Path(args.out) / "cells").is_dir() and not (Path(args.out) / "calm.json").is_file():
        raise TemperanceError(f"{args.out} has no cells/ (run `temperance eval score` or `generate` first)")
    res = build_report(args.out)
    print(f"temperance eval: {res['n_rows']} rows -> {res['rows']}; report -> {res['report']}")
    for name, t in res["trends"].items():
        print(f"  {name}: {t['verdict']}")
    return 0
