"""One pure function per sampler, usable on bare tensors.

Each takes dense logits ``[B, V]`` first, then keyword knobs named as in `temperance.SamplingParams`
(a Python scalar or a ``[B]`` tensor each), validates them, and returns new logits; the input is
never mutated. Truncation sets entries to ``-inf`` and always leaves at least one finite entry per
row. Samplers that read the context take ``history=`` (a list of token-id lists, or a ``[B, L]``
int64 tensor left-padded with -1); random ones take ``seed=`` and ``step=``.
"""

from .dry import dry, expand_sequence_breakers
from .dynatemp import dynatemp
from .epsilon import epsilon
from .eta import eta
from .logit_bias import logit_bias
from .min_p import min_p
from .mirostat import mirostat, mirostat_update
from .no_repeat_ngram import no_repeat_ngram
from .penalties import penalties
from .smoothing import smoothing
from .temperature import temperature
from .tfs import tfs
from .top_a import top_a
from .top_k import top_k
from .top_n_sigma import top_n_sigma
from .top_p import top_p
from .typical import typical_p
from .xtc import xtc

__all__ = [
    "dry", "dynatemp", "epsilon", "eta", "expand_sequence_breakers", "logit_bias", "min_p",
    "mirostat", "mirostat_update", "no_repeat_ngram", "penalties", "smoothing", "temperature",
    "tfs", "top_a", "top_k", "top_n_sigma", "top_p", "typical_p", "xtc",
]
