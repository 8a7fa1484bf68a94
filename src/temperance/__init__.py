"""temperance: modern LLM sampling and decoding — every sampler, exact and batched, in one chain
whose order is data.

    params (SamplingParams) → Batch → Chain → pick → loop → events
"""

from . import ops
from .batch import Batch
from .candidates import Candidates
from .chain import Chain
from .errors import TemperanceError
from .params import PRESETS, SAMPLERS, SamplingParams
from .pick import Picked, pick

__all__ = ["Batch", "Candidates", "Chain", "PRESETS", "Picked", "SAMPLERS", "SamplingParams",
           "TemperanceError", "ops", "pick"]
__version__ = "0.1.0"
