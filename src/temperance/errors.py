"""The one exception type temperance raises for bad input.

`TemperanceError` is a `ValueError`: every message names the parameter (or the row), the value and
the valid range, so a CLI or server can show it to a person as is, without a stack trace.
"""


class TemperanceError(ValueError):
    """Bad input: an out-of-range knob, an unknown sampler, NaN logits, an emptied row, ..."""
