"""One pure function per sampler, usable on bare tensors.

Each takes dense logits ``[B, V]`` first, then keyword knobs named as in `temperance.SamplingParams`
(a Python scalar or a ``[B]`` tensor each), validates them, and returns new logits; the input is
never mutated. Truncation sets entries to ``-inf`` and always leaves at least one finite entry per
row. Samplers that read the context take ``history=`` (a list of token-id lists, or a ``[B, L]``
int64 tensor left-padded with -1); random ones take ``seed=`` and ``step=``.

Each sampler's file also declares its chain stage (``STAGE``: name, knobs with neutral values,
ranges, meanings, CLI flags and request names; see `temperance.stage`). ``STAGES`` lists them in
the default (llama.cpp-compatible) order; everything else — `SamplingParams`, the chain, the CLI,
the server's request parser, the playground — is derived from it. Adding a sampler is one file
plus one entry here.
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

from .logit_bias import STAGE as _LOGIT_BIAS
from .penalties import STAGE as _PENALTIES
from .dry import STAGE as _DRY
from .no_repeat_ngram import STAGE as _NO_REPEAT_NGRAM
from .top_n_sigma import STAGE as _TOP_N_SIGMA
from .top_k import STAGE as _TOP_K
from .tfs import STAGE as _TFS
from .typical import STAGE as _TYPICAL
from .top_p import STAGE as _TOP_P
from .min_p import STAGE as _MIN_P
from .top_a import STAGE as _TOP_A
from .epsilon import STAGE as _EPSILON
from .eta import STAGE as _ETA
from .xtc import STAGE as _XTC
from .temperature import STAGE as _TEMPERATURE
from .dynatemp import STAGE as _DYNATEMP
from .smoothing import STAGE as _SMOOTHING
from .mirostat import STAGE as _MIROSTAT

# The registry, in the default order (stages with in_order=False run inside another stage or are
# placed by the chain: dynatemp and smoothing inside temperature; mirostat replaces truncation).
STAGES = (
    _LOGIT_BIAS, _PENALTIES, _DRY, _NO_REPEAT_NGRAM, _TOP_N_SIGMA, _TOP_K, _TFS, _TYPICAL, _TOP_P,
    _MIN_P, _TOP_A, _EPSILON, _ETA, _XTC, _TEMPERATURE, _DYNATEMP, _SMOOTHING, _MIROSTAT)
FIELDS = {k.name: k for s in STAGES for k in s.knobs}   # every knob, in declaration order
KNOBS = {n: k for n, k in FIELDS.items() if k.numeric}  # the numeric ones

__all__ = [
    "dry", "dynatemp", "epsilon", "eta", "expand_sequence_breakers", "logit_bias", "min_p",
    "mirostat", "mirostat_update", "no_repeat_ngram", "penalties", "smoothing", "temperature",
    "tfs", "top_a", "top_k", "top_n_sigma", "top_p", "typical_p", "xtc",
]
