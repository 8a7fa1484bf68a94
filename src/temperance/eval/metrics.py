"""Quality and diversity of generated text: each metric's definition, then its code.

Every function takes the ``k`` samples of ONE prompt (a *group*) and returns one number, so the
harness can bootstrap over prompts; rows report the mean over prompts. Words are
``re.findall(r"\\w+|[^\\w\\s]", text.lower())`` (lower-cased words and punctuation marks).

Quality

- **accuracy**: the share of the group's samples that are correct (`data.Item.correct`: an answer
  as a whole word, or the regex).
- **nll**: mean over samples of the mean per-token negative log-likelihood of the sample under
  the *raw* model (its logits before any sampler, ``raw_logprobs``), in nats. Low = the model
  itself finds the text likely; truncation pushes it down, heat pushes it up.

Diversity (higher = more diverse unless said otherwise)

- **distinct_n** (Li et al. 2016), n = 1..4: unique n-grams / all n-grams, pooled over the group's
  samples (corpus-level within the group; ``corpus_distinct_n`` in `corpus_distinct` pools every
  sample of a configuration).
- **self_bleu** (Zhu et al. 2018, Texygen): mean over samples i of sacrebleu's sentence BLEU of
  sample i against the other k-1 as references (4-grams, ``13a`` tokenizer, ``exp`` smoothing),
  on a 0-100 scale. LOWER = more diverse.
- **compression_ratio**: ``len(raw) / len(gzip(raw))`` of the group's samples joined by newlines
  (gzip level 9, no timestamp; Shaib et al. 2024). LOWER = more diverse.
- **embedding_distance**: mean over pairs i < j of ``1 - cos(e_i, e_j)``, e the unit-norm MiniLM
  sentence embeddings (`temperance.mbr.embed`).
- **similar**: 1 if the group's mean pairwise cosine similarity is above 0.8, else 0; its mean is
  the share of prompts whose samples are near-duplicates (Artificial Hivemind's statistic).
- **distinct_k** (NoveltyBench, Zhang et al. 2025): the number of equivalence classes after greedy
  partitioning — each sample joins the first class whose *first* member it is equivalent to, else
  opens a new class. Model-free equivalence (NoveltyBench's fallback rules): two texts of at most 5
  words each are equivalent when they share at least half the distinct words of the longer one;
  otherwise when their ROUGE-1 F1 (clipped word-unigram overlap) exceeds 0.458.
- **utility_k** (NoveltyBench): ``sum_i p^i s_i / sum_i p^i`` over samples i = 0..k-1 in order,
  patience p = 0.8, where ``s_i`` is the sample's quality (1 on open-ended tasks, its correctness
  on verifiable ones) when sample i opens a new class and 0 otherwise. No reward model: on
  open-ended tasks utility_k measures novelty alone.
- **slop**: EQ-Bench's slop index with our own list (``temperance/data/slop.txt``):
  ``(word_hits + 2 * bigram_hits + 8 * trigram_hits) / words * 1000`` over the group. LOWER = less
  cliché.

>>> g = ["the cat sat", "the cat sat", "a dog ran"]
>>> round(distinct_n(g, 1), 3), distinct_k(g), round(compression_ratio(["ab"] * 50), 1) > 5
(0.667, 2, True)
"""

from __future__ import annotations

import functools
import gzip
import math
import re
from collections import Counter
from pathlib import Path
from typing import Callable, Sequence

__all__ = ["words", "distinct_n", "corpus_distinct", "self_bleu", "compression_ratio",
           "embedding_stats", "equivalent", "rouge1_f", "partition", "distinct_k", "utility_k",
           "slop_index", "group_metrics", "PATIENCE", "SIMILAR"]

PATIENCE = 0.8      # NoveltyBench's utility patience
SIMILAR = 0.8       # "near-duplicate" mean cosine similarity (Artificial Hivemind)
ROUGE1 = 0.458      # NoveltyBench's ROUGE-1 equivalence threshold
SLOP_FILE = Path(__file__).resolve().parent.parent / "data" / "slop.txt"


def words(text: str) -> list[str]:
    """Lower-cased words and punctuation marks."""
    return re.findall(r"\w+|[^\w\s]", text.lower())


def _ngrams(ws: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float:
    """Unique n-grams / n-grams, pooled over `texts` (NaN when there is no n-gram)."""
    grams = [g for t in texts for g in _ngrams(words(t), n)]
    return len(set(grams)) / len(grams) if grams else math.nan


def corpus_distinct(texts: Sequence[str], ns: Sequence[int] = (1, 2, 3, 4)) -> dict[str, float]:
    """``corpus_distinct_n`` over every text of a configuration (no per-prompt unit, no CI)."""
    return {f"corpus_distinct_{n}": distinct_n(texts, n) for n in ns}


@functools.cache
def _bleu():
    from sacrebleu.metrics import BLEU
    return BLEU(effective_order=True)


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0-100) of each text against the others (NaN for fewer than 2)."""
    if len(texts) < 2:
        return math.nan
    bleu = _bleu()
    return sum(bleu.sentence_score(t, [o for j, o in enumerate(texts) if j != i]).score
               for i, t in enumerate(texts)) / len(texts)


def compression_ratio(texts: Sequence[str]) -> float:
    """Raw bytes / gzip bytes of the texts joined by newlines (NaN for empty text)."""
    raw = "\n".join(texts).encode("utf-8")
    if not raw:
        return math.nan
    return len(raw) / len(gzip.compress(raw, compresslevel=9, mtime=0))


def embedding_stats(texts: Sequence[str], embed: Callable | None = None) -> dict[str, float]:
    """``embedding_distance`` and ``similar`` of one group (see the module)."""
    if len(texts) < 2:
        return {"embedding_distance": math.nan, "similar": math.nan}
    if embed is None:
        from ..mbr import embed
    e = embed(list(texts)).double()
    sim = e @ e.T
    k = len(texts)
    mean_sim = float((sim.sum() - sim.diagonal().sum()) / (k * (k - 1)))
    return {"embedding_distance": 1.0 - mean_sim, "similar": float(mean_sim > SIMILAR)}


def rouge1_f(a: str, b: str) -> float:
    """ROUGE-1 F1 on word unigrams (clipped counts)."""
    ca, cb = Counter(words(a)), Counter(words(b))
    overlap = sum((ca & cb).values())
    if not overlap:
        return 0.0
    p, r = overlap / sum(cb.values()), overlap / sum(ca.values())
    return 2 * p * r / (p + r)


def equivalent(a: str, b: str) -> bool:
    """NoveltyBench's model-free equivalence (see the module)."""
    wa, wb = words(a), words(b)
    if len(wa) <= 5 and len(wb) <= 5:
        sa, sb = set(wa), set(wb)
        if not sa and not sb:
            return True
        return len(sa & sb) >= 0.5 * max(len(sa), len(sb))
    return rouge1_f(a, b) > ROUGE1


def partition(texts: Sequence[str]) -> list[int]:
    """Greedy partition: the class index of each text (compared with each class's first member)."""
    firsts: list[str] = []
    out = []
    for t in texts:
        for c, f in enumerate(firsts):
            if equivalent(t, f):
                out.append(c)
                break
        else:
            firsts.append(t)
            out.append(len(firsts) - 1)
    return out


def distinct_k(texts: Sequence[str]) -> int:
    """Number of equivalence classes among `texts`."""
    return len(set(partition(texts)))


def utility_k(texts: Sequence[str], quality: Sequence[float] | None = None,
              patience: float = PATIENCE) -> float:
    """``sum_i p^i s_i / sum_i p^i``; ``s_i`` = quality of sample i if it opens a class, else 0."""
    if not texts:
        return math.nan
    q = list(quality) if quality is not None else [1.0] * len(texts)
    seen: set[int] = set()
    num = den = 0.0
    for i, c in enumerate(partition(texts)):
        w = patience ** i
        den += w
        if c not in seen:
            seen.add(c)
            num += w * q[i]
    return num / den


@functools.cache
def _slop_lists() -> tuple[frozenset, frozenset, frozenset]:
    entries = [tuple(words(line)) for line in SLOP_FILE.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")]
    return tuple(frozenset(e for e in entries if len(e) == n) for n in (1, 2, 3))


def slop_index(texts: Sequence[str], lists: tuple | None = None) -> float:
    """``(word_hits + 2 bigram_hits + 8 trigram_hits) / words * 1000`` (NaN with no words)."""
    one, two, three = lists if lists is not None else _slop_lists()
    hits = total = 0
    for t in texts:
        ws = [w for w in words(t) if re.match(r"\w", w)]
        total += len(ws)
        hits += sum(1 for w in ws if (w,) in one)
        hits += 2 * sum(1 for g in _ngrams(ws, 2) if g in two)
        hits += 8 * sum(1 for g in _ngrams(ws, 3) if g in three)
    return hits / total * 1000 if total else math.nan


def group_metrics(texts: Sequence[str], *, correct: Sequence[bool] | None = None,
                  nll: Sequence[float] | None = None, embed: Callable | None = None,
                  embeddings: bool = True) -> dict[str, float]:
    """Every metric of one prompt's samples (``correct`` for verifiable tasks, ``nll`` per sample)."""
    m: dict[str, float] = {}
    if correct is not None:
        m["accuracy"] = sum(map(bool, correct)) / len(correct)
    if nll is not None:
        finite = [x for x in nll if math.isfinite(x)]
        m["nll"] = sum(finite) / len(finite) if finite else math.nan
    for n in (1, 2, 3, 4):
        m[f"distinct_{n}"] = distinct_n(texts, n)
    m["self_bleu"] = self_bleu(texts)
    m["compression_ratio"] = compression_ratio(texts)
    if embeddings:
        m.update(embedding_stats(texts, embed))
    m["distinct_k"] = float(distinct_k(texts))
    m["utility_k"] = utility_k(texts, [float(c) for c in correct] if correct is not None else None)
    m["slop"] = slop_index(texts)
    return m
