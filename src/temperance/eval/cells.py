"""Cells: the grid as independent units of work, with content-hash ids, resumable, run anywhere.

A grid expands into **cells**; a cell is a pure function of its *spec* (a JSON object: model,
task or text, configuration, seed block, sizes, harness version) and its id is the first 16 hex
digits of the sha256 of that spec in canonical JSON. Each cell writes one file,
``OUT/cells/<id>.json`` (written to a temporary name, then renamed: a file is complete or absent).
A rerun skips every cell whose file exists, so an interrupted run resumes where it stopped and a
grown grid runs only its new cells; the report is rebuilt from the cell files alone.

Cells travel in **jobs**: a generation job is one cell; a score job is one shard of held-out
windows with all of its unfinished configuration cells, so the forward pass over the shard is
paid once per run, not once per configuration.

Where jobs run:

- ``workers=0``: in this process (tests, debugging);
- ``workers=N`` (default 1): N local worker processes (``spawn``), each loading the model once
  with one torch thread;
- ``ray=True`` or ``ray="ADDRESS"``: N Ray actors, on a local Ray (``ray.init()``) or an existing
  cluster. Ray is optional (``pip install 'temperance[ray]'``).

A rich progress bar with an ETA counts cells.

>>> cell_id({"kind": "generate", "seed_block": 0}) == cell_id({"seed_block": 0, "kind": "generate"})
True
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import TemperanceError

__all__ = ["VERSION", "cell_id", "Store", "run_jobs", "execute"]

VERSION = 1   # bump when a cell's meaning changes: every id changes with it


def cell_id(spec: dict) -> str:
    """sha256 of the canonical JSON of `spec`, 16 hex digits."""
    blob = json.dumps(spec, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


class Store:
    """``OUT/cells/<id>.json``: one complete file per finished cell."""

    def __init__(self, out: str | Path):
        self.dir = Path(out) / "cells"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, cid: str) -> Path:
        return self.dir / f"{cid}.json"

    def has(self, cid: str) -> bool:
        return self.path(cid).is_file()

    def write(self, cid: str, record: dict) -> None:
        tmp = self.dir / f".{cid}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(record, ensure_ascii=False))
        tmp.replace(self.path(cid))

    def read_all(self) -> list[dict]:
        out = []
        for f in sorted(self.dir.glob("*.json")):
            try:
                out.append(json.loads(f.read_text()))
            except (OSError, ValueError) as e:
                raise TemperanceError(f"unreadable cell file {f}: {e}; delete it to rerun the cell") from None
        return out


# -- what a worker does ---------------------------------------------------------------------------

_RUNTIMES: dict[str, Any] = {}


def _runtime(model: str, threads: int = 1):
    if model not in _RUNTIMES:
        from .. import models

        _RUNTIMES[model] = models.load(model, threads=threads)
    return _RUNTIMES[model]


def register_runtime(model: str, runtime: Any) -> None:
    """Use an already-loaded runtime for `model` in this process (tests, notebooks)."""
    _RUNTIMES[model] = runtime


def execute(job: dict) -> list[tuple[str, dict]]:
    """Run one job; return ``(cell id, record)`` per finished cell."""
    from ..generate import dry_breakers_for
    from ..params import SamplingParams

    rt = _runtime(job["model"], job.get("threads", 1))
    if job["kind"] == "score":
        from .score import forward_logits, score_config
        import torch

        t0 = time.perf_counter()
        logits = torch.cat([forward_logits(rt.model, w) for w in job["windows"]])
        fwd = time.perf_counter() - t0
        out = []
        store = Store(job["store"]) if job.get("store") else None
        for cell in job["cells"]:
            t1 = time.perf_counter()
            params = SamplingParams.from_dict(cell["spec"]["config"])
            br = dry_breakers_for([params], rt.tokenizer)
            windows = score_config(params, logits, job["windows"], br[0] if br else None)
            rec = {**cell, "windows": windows, "seconds": time.perf_counter() - t1, "forward_seconds": fwd}
            if store is not None:  # written as soon as done: a killed run keeps its finished cells
                store.write(cell["id"], rec)
            out.append((cell["id"], rec))
        return out
    if job["kind"] == "generate":
        from .data import Item, Task
        from .generate import run_generate_cell

        cell = job["cell"]
        spec = cell["spec"]
        task = Task(job["task"]["name"], tuple(Item(i["prompt"], tuple(i.get("answers", ())), i.get("regex"))
                                               for i in job["task"]["items"]))
        t0 = time.perf_counter()
        prompts = run_generate_cell(rt, task, SamplingParams.from_dict(spec["config"]),
                                    samples=spec["samples"], max_tokens=spec["max_tokens"],
                                    chat=spec["chat"], seed_block=spec["seed_block"],
                                    base_seed=spec["base_seed"], embeddings=job.get("embeddings", True),
                                    keep_samples=job.get("keep_samples"),
                                    judge=_runtime(spec["judge"], job.get("threads", 1)) if spec.get("judge") else None)
        rec = {**cell, "prompts": prompts, "seconds": time.perf_counter() - t0}
        if job.get("store"):
            Store(job["store"]).write(cell["id"], rec)
        return [(cell["id"], rec)]
    raise TemperanceError(f"unknown job kind {job['kind']!r}")


def _init_worker(threads: int, parent: int | None = None) -> None:
    """Set a worker up; with ``parent`` (a local pool), the worker exits when that process is gone
    (killed without the chance to stop its pool), instead of computing cells nobody collects."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch

    torch.set_num_threads(threads)
    if parent is not None:
        import threading

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="temperance-parent-watch", daemon=True).start()


class _RayWorker:
    """A Ray actor: one model per actor, jobs through `execute`."""

    def __init__(self, threads: int = 1):
        _init_worker(threads)

    def run(self, job: dict) -> list[tuple[str, dict]]:
        return execute(job)


def _count(job: dict) -> int:
    return len(job["cells"]) if "cells" in job else 1


def run_jobs(jobs: Sequence[dict], store: Store, *, workers: int = 1, ray: bool | str | None = None,
             threads: int = 1, progress: bool = True, label: str = "cells") -> int:
    """Run `jobs`, writing every finished cell into `store`; return the number of cells run."""
    jobs = list(jobs)
    total = sum(_count(j) for j in jobs)
    if not jobs:
        return 0
    local = not ray  # local workers write their cells as they finish; Ray's come back to be written
    for j in jobs:
        j["threads"] = threads
        if local:
            j["store"] = str(store.dir.parent)
    bar = _Progress(total, label, progress)
    try:
        if ray:
            results = _ray_results(jobs, workers, None if ray is True else ray, threads)
        elif workers <= 0:
            results = (execute(j) for j in jobs)
        else:
            results = _process_results(jobs, workers, threads)
        for res in results:
            for cid, rec in res:
                if not local:
                    store.write(cid, rec)
                bar.advance()
    finally:
        bar.stop()
    return total


def _process_results(jobs: Sequence[dict], workers: int, threads: int) -> Iterable[list]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    with ProcessPoolExecutor(max_workers=min(workers, len(jobs)), mp_context=mp.get_context("spawn"),
                             initializer=_init_worker, initargs=(threads, os.getpid())) as ex:
        futures = [ex.submit(execute, j) for j in jobs]
        for f in as_completed(futures):
            yield f.result()


def _ray_results(jobs: Sequence[dict], workers: int, address: str | None, threads: int) -> Iterable[list]:
    try:
        import ray
        from ray.util import ActorPool
    except ImportError:
        raise TemperanceError("--ray needs Ray: pip install 'temperance[ray]'") from None
    if not ray.is_initialized():
        if address is None:  # a local cluster on the loopback only, no usage reports
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
            ray.init(num_cpus=max(1, workers), include_dashboard=False, log_to_driver=False,
                     _node_ip_address="127.0.0.1")
        else:
            ray.init(address=address, log_to_driver=False)
    actor = ray.remote(num_cpus=1)(_RayWorker)
    pool = ActorPool([actor.remote(threads) for _ in range(max(1, min(workers, len(jobs))))])
    yield from pool.map_unordered(lambda a, j: a.run.remote(j), list(jobs))


class _Progress:
    """A rich bar with an ETA on stderr (silent when `enabled` is false)."""

    def __init__(self, total: int, label: str, enabled: bool):
        self.p = None
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                   TimeElapsedColumn, TimeRemainingColumn)

        self.p = Progress(TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                          console=Console(stderr=True))
        self.task = self.p.add_task(label, total=total)
        self.p.start()

    def advance(self) -> None:
        if self.p is not None:
            self.p.advance(self.task)

    def stop(self) -> None:
        if self.p is not None:
            self.p.stop()
