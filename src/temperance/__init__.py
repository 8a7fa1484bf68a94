"""temperance: modern LLM sampling and decoding — every sampler, exact and batched, in one chain
whose order is data.

    params (SamplingParams) → Batch → Chain → pick → loop → events
"""

from .threads import prepare_openmp, started_as_cli

if started_as_cli():      # before torch loads OpenMP: waiting threads sleep instead of spinning
    prepare_openmp()

from . import ops  # noqa: E402
from .batch import Batch  # noqa: E402
from .candidates import Candidates  # noqa: E402
from .chain import Chain  # noqa: E402
from .errors import TemperanceError  # noqa: E402
from .params import PRESETS, SAMPLERS, SamplingParams  # noqa: E402
from .pick import Picked, pick  # noqa: E402

__all__ = ["Batch", "Candidates", "Chain", "PRESETS", "Picked", "SAMPLERS", "SamplingParams",
           "TemperanceError", "ops", "pick"]
__version__ = "0.1.0"
