"""Batch generation on a Ray cluster with temperance's chain: Ray Data, one actor per model copy.

Each actor loads the model once (``temperance.models.load``) and runs `temperance.generate` on the
batches Ray Data hands it; every row carries its own knobs as a JSON string with the field names
of ``temperance serve`` (a string, because Arrow merges dict keys across rows and fills the gaps
with None). Rows with a ``seed`` repeat exactly, on any actor and in any batch.

    pip install "temperance[ray,hf]"          # Ray Data 2.60 (+ pyarrow, pandas)

    import json, ray
    from temperance.ray_batch import generate_dataset

    ray.init(num_cpus=2, include_dashboard=False)      # or ray.init("auto") on a cluster
    rows = [{"prompt": "Once upon a time", "params": json.dumps({"min_p": 0.1, "temperature": 1.5,
             "seed": i, "max_tokens": 32})} for i in range(16)]
    out = generate_dataset(ray.data.from_items(rows), model="smollm2", actors=2, batch_size=8)
    for row in out.take_all():
        print(row["params"], row["text"])

Input columns: ``prompt`` (text) and ``params`` (a JSON object as a string, or empty for the
defaults; ``max_tokens``, ``min_tokens`` and ``stop`` per row are read from it too). Other columns
pass through. Output adds ``text``, ``tokens`` (ids) and ``finish_reason``. A bad knob fails the
job with our message, naming the row. A local machine only: ``init_local()`` starts Ray on
127.0.0.1 with telemetry off (set its two environment variables before ``import ray``).
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np

from .errors import TemperanceError
from .request import GenOptions, params_from_request

__all__ = ["Generator", "generate_dataset", "init_local", "LOCAL_ENV"]

# Ray on one machine, loopback only: without the first, Ray replaces 127.0.0.1 by the network
# card's address; the second turns usage statistics off. Both are read when `ray` is imported.
LOCAL_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "RAY_USAGE_STATS_ENABLED": "0"}


class Generator:
    """The Ray Data actor: one model copy; ``__call__`` generates one batch of rows.

    Args:
        model: a `temperance.models` name or a local model path, loaded once per actor.
        threads: torch threads per actor (give the actor as many CPUs).
        max_tokens: the default per row (a row's ``max_tokens`` in its params wins).
        chat: wrap prompts in the model's chat template.
    """

    def __init__(self, model: str = "smollm2", threads: int = 1, max_tokens: int = 64, chat: bool = False):
        from . import models

        self.runtime = models.load(model, threads=threads)
        self.defaults = GenOptions(max_tokens=max_tokens)
        self.chat = chat

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        from .generate import generate_text

        if "prompt" not in batch:
            raise TemperanceError(f"the dataset needs a 'prompt' column, got {sorted(batch)}")
        prompts = [str(p) for p in batch["prompt"]]
        raw = batch["params"] if "params" in batch else [None] * len(prompts)
        params, opts = [], []
        for i, s in enumerate(raw):
            try:
                knobs = json.loads(s) if isinstance(s, (str, bytes)) and s else {}
                p, o = params_from_request(knobs, defaults=self.defaults)
            except (ValueError, TemperanceError) as e:  # json's errors are ValueErrors too
                raise TemperanceError(f"row {i} (prompt {prompts[i][:40]!r}): params {s!r}: {e}") from None
            if o.n != 1:
                raise TemperanceError(f"row {i}: n={o.n}: one sample per row here (repeat the row)")
            params.append(p)
            opts.append(o)
        done = generate_text(self.runtime, prompts, params, max_tokens=[o.max_tokens for o in opts],
                             min_tokens=[o.min_tokens for o in opts], stop=[list(o.stop) for o in opts],
                             chat=self.chat, constraint=([o.constraint for o in opts]
                                                         if any(o.constraint for o in opts) else None))
        out = dict(batch)
        out["text"] = np.array([c[0].text for c in done], dtype=object)
        tokens = out["tokens"] = np.empty(len(done), dtype=object)  # ragged: one id array per row
        for i, c in enumerate(done):
            tokens[i] = np.array(c[0].tokens, dtype=np.int64)
        out["finish_reason"] = np.array([c[0].finish_reason for c in done], dtype=object)
        return out


def generate_dataset(ds: Any, *, model: str = "smollm2", actors: int = 2, batch_size: int = 8,
                     max_tokens: int = 64, chat: bool = False, threads: int = 1) -> Any:
    """``ds.map_batches`` over a pool of `Generator` actors (``actors`` model copies, ``threads``
    CPUs each). Lazy, as Ray Data is: consume it (``take_all``, ``write_json``, ...) to run."""
    import ray.data

    if actors < 1 or batch_size < 1 or threads < 1:
        raise TemperanceError(f"actors, batch_size and threads must be >= 1, got {actors}, "
                              f"{batch_size}, {threads}")
    return ds.map_batches(Generator, fn_constructor_kwargs=dict(model=model, threads=threads,
                                                                max_tokens=max_tokens, chat=chat),
                          batch_size=batch_size, num_cpus=threads,
                          compute=ray.data.ActorPoolStrategy(size=actors))


def init_local(num_cpus: int = 2, **kwargs: Any) -> Any:
    """Start a Ray on this machine only: 127.0.0.1, telemetry off, no dashboard.

    Must run before anything imports ``ray`` (the two variables are read at import).
    """
    import sys

    if "ray" in sys.modules and any(os.environ.get(k) != v for k, v in LOCAL_ENV.items()):
        raise TemperanceError("init_local must run before `import ray`, or set "
                              + " ".join(f"{k}={v}" for k, v in LOCAL_ENV.items()) + " yourself")
    os.environ.update(LOCAL_ENV)
    import ray

    return ray.init(num_cpus=num_cpus, include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
