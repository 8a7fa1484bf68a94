"""Plans: a grid and its data turned into jobs of cells (see `temperance.eval.cells`).

`plan_score` cuts the held-out text into windows, groups them into shards and makes one cell per
(shard, configuration); `plan_generate` makes one cell per (task, configuration, seed block).
Cells already in the store are left out, so a rerun plans only what is missing.

>>> from temperance.eval.grid import expand
>>> from temperance.eval.data import load_task
>>> jobs, n = plan_generate("m", [load_task("easy").head(2)], expand([{}], [1.0]), samples=2,
...                         max_tokens=4, chat=False, seeds=2)
>>> n, len(jobs), jobs[0]["cell"]["spec"]["seed_block"]
(2, 2, 0)
"""

from __future__ import annotations

import hashlib
import json
from typing import Any, Sequence

from .cells import VERSION, Store, cell_id
from .data import Task
from .grid import Config

__all__ = ["plan_score", "plan_generate", "config_spec"]


def config_spec(c: Config) -> dict:
    """What identifies a configuration: its params without the seed (the harness seeds)."""
    d = c.params.to_dict()
    d.pop("seed", None)
    return d


def _cell(spec: dict, c: Config, **extra: Any) -> dict:
    return {"id": cell_id(spec), "spec": spec, "config": c.to_dict(), **extra}


def plan_score(model: str, windows: Sequence[Sequence[int]], configs: Sequence[Config], *,
               shard_windows: int = 4, store: Store | None = None, source: str = "") -> tuple[list[dict], int]:
    """Jobs (one per shard with unfinished cells) and the number of cells in the grid."""
    jobs, total = [], 0
    for s in range(0, len(windows), shard_windows):
        shard = [list(w) for w in windows[s:s + shard_windows]]
        text_hash = hashlib.sha256(json.dumps(shard).encode()).hexdigest()[:16]
        cells = []
        for c in configs:
            spec = {"kind": "score", "model": model, "text": text_hash, "source": source,
                    "shard": s // shard_windows, "config": config_spec(c), "version": VERSION}
            total += 1
            cell = _cell(spec, c)
            if store is None or not store.has(cell["id"]):
                cells.append(cell)
        if cells:
            jobs.append({"kind": "score", "model": model, "windows": shard, "cells": cells})
    return jobs, total


def plan_generate(model: str, tasks: Sequence[Task], configs: Sequence[Config], *, samples: int,
                  max_tokens: int, chat: bool, seeds: int, base_seed: int = 0,
                  store: Store | None = None, embeddings: bool = True,
                  keep_samples: int | None = None, judge: str | None = None) -> tuple[list[dict], int]:
    """One job per unfinished (task, configuration, seed block) cell; and the grid's cell count."""
    jobs, total = [], 0
    for t in tasks:
        payload = {"name": t.name, "items": [{"prompt": i.prompt, "answers": list(i.answers),
                                              "regex": i.regex} for i in t.items]}
        for c in configs:
            for b in range(seeds):
                spec = {"kind": "generate", "model": model, "task": t.name, "task_hash": t.hash,
                        "config": config_spec(c), "samples": samples, "max_tokens": max_tokens,
                        "chat": chat, "seed_block": b, "base_seed": base_seed,
                        "embeddings": embeddings, "version": VERSION}
                if judge:
                    spec["judge"] = judge
                total += 1
                cell = _cell(spec, c, task=t.name, verifiable=t.verifiable)
                if store is None or not store.has(cell["id"]):
                    jobs.append({"kind": "generate", "model": model, "task": payload, "cell": cell,
                                 "embeddings": embeddings, "keep_samples": keep_samples})
    return jobs, total
