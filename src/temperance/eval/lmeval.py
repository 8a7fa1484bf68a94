"""lm-evaluation-harness as a carrier: `TemperanceLM`, so any generative lm-eval task runs with any
temperance sampler.

`TemperanceLM` is lm-eval's `HFLM` (tokenisation, chat templates and the log-likelihood side are
inherited) with `generate_until` replaced: each request's ``gen_kwargs`` are normalised by lm-eval
(``until``, ``max_gen_toks``, ``do_sample``), and every other key — ``temperature``, ``min_p``,
``top_n_sigma``, ``xtc_probability``, ``repeat_penalty``, ``samplers`` ... — goes through
`temperance.request.params_from_request`, the server's parser, over the adapter's base
configuration. ``do_sample=False`` means ``temperature=0`` (lm-eval's rule). Requests sharing
gen_kwargs are generated together in batches by `temperance.generate.generate`; the seed of a
request is a hash of (base seed, context) plus its repeat index, so repeats (``repeats: k``)
differ from each other and every configuration sees the same seeds (common random numbers).

Offline, lm-eval's stock tasks point at the Hub; give local tasks (``dataset_path: json`` with
``data_files``) through ``--include-path``. Needs ``pip install lm-eval==0.4.13`` (the ``lmeval``
extra).

    temperance eval lm-eval --include-path my_tasks --tasks my_task --configs "min_p=0.1" \\
        --gen-kwargs "temperature=1.5,do_sample=True" --limit 20
"""

from __future__ import annotations

import hashlib
import json
from collections import defaultdict
from typing import Any

from ..errors import TemperanceError
from ..generate import generate
from ..request import params_from_request

__all__ = ["TemperanceLM", "evaluate"]

SEED_SPACE = 2**62


def _lm_eval():
    try:
        from lm_eval.models.huggingface import HFLM
        from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs
    except ImportError:
        raise TemperanceError("eval lm-eval needs lm-evaluation-harness: pip install 'temperance[lmeval]'") from None
    return HFLM, handle_stop_sequences, normalize_gen_kwargs


def _make_class():
    HFLM, handle_stop_sequences, normalize_gen_kwargs = _lm_eval()

    class TemperanceLM(HFLM):
        """HFLM whose generation is temperance's: ``TemperanceLM(runtime, base={"min_p": 0.1})``."""

        def __init__(self, runtime: Any, *, base: dict | None = None, seed: int = 0, batch_size: int = 16,
                     max_gen_toks: int = 256):
            tok = runtime.tokenizer.tok if hasattr(runtime.tokenizer, "tok") else runtime.tokenizer
            super().__init__(pretrained=runtime.model, tokenizer=tok, device="cpu", batch_size=batch_size,
                             max_gen_toks=max_gen_toks)
            self.runtime, self.base, self.seed = runtime, dict(base or {}), int(seed)
            self.rows = batch_size
            params_from_request(self.base)        # a bad base configuration fails here, not mid-run

        def _params(self, gen_kwargs: dict):
            kw = dict(normalize_gen_kwargs(gen_kwargs, self.max_gen_toks))
            until = handle_stop_sequences(kw.pop("until", None), eos=None)
            max_toks = kw.pop("max_gen_toks")
            if not kw.pop("do_sample", True):
                kw["temperature"] = 0.0
            body = {**self.base, **kw}
            params, _ = params_from_request(body)
            return params, [u for u in until if u], max_toks

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            import dataclasses

            out: list[str | None] = [None] * len(requests)
            groups: dict[str, list[int]] = defaultdict(list)
            for i, r in enumerate(requests):
                groups[json.dumps(r.args[1], sort_keys=True, default=str)].append(i)
            for idx in groups.values():
                params, until, max_toks = self._params(requests[idx[0]].args[1])
                seen: dict[str, int] = defaultdict(int)
                rows = []
                for i in idx:
                    ctx = requests[i].args[0]
                    h = hashlib.sha256(f"{self.seed}:{ctx}".encode()).digest()
                    rows.append((i, ctx, int.from_bytes(h[:8], "little") % SEED_SPACE + seen[ctx]))
                    seen[ctx] += 1
                for s in range(0, len(rows), self.rows):
                    chunk = rows[s:s + self.rows]
                    texts = [""] * len(chunk)
                    ps = [dataclasses.replace(params, seed=seed) for _, _, seed in chunk]
                    for e in generate(self.runtime, [c for _, c, _ in chunk], ps, max_tokens=max_toks,
                                      stop=until):
                        texts[e.request] += e.text
                    for (i, _, _), t in zip(chunk, texts):
                        out[i] = t
            return out  # type: ignore[return-value]

    return TemperanceLM


def __getattr__(name: str):
    if name == "TemperanceLM":  # built lazily: importing this module must not need lm-eval
        return _make_class()
    raise AttributeError(name)


def evaluate(runtime: Any, tasks: list[str], *, include_path: str | None = None, base: dict | None = None,
             gen_kwargs: str | dict | None = None, limit: int | float | None = None, seed: int = 0,
             chat: bool = False, log_samples: bool = False) -> dict:
    """Run lm-eval's `simple_evaluate` with a `TemperanceLM` over `runtime`; return its results."""
    _lm_eval()
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    lm = _make_class()(runtime, base=base, seed=seed)
    tm = TaskManager(include_path=include_path) if include_path else TaskManager()
    return simple_evaluate(model=lm, tasks=tasks, task_manager=tm, gen_kwargs=gen_kwargs, limit=limit,
                           apply_chat_template=chat, log_samples=log_samples, bootstrap_iters=1000,
                           random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed)
