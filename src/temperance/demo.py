"""A built-in next-token distribution for teaching, no model needed.

What a small LM might give after "The cat sat on the": ten named candidates and a long tail of
990 other tokens sharing the remaining mass (as a real vocabulary has). The context already
contains " mat" once, so repetition penalties have something to act on.
"""

from __future__ import annotations

import math

import torch

PROMPT = "The cat sat on the mat. The cat sat on the"
HEAD = [(" mat", 0.32), (" floor", 0.18), (" couch", 0.11), (" bed", 0.08), (" windowsill", 0.06),
        (" roof", 0.05), (" table", 0.04), (" chair", 0.035), (" sofa", 0.03), (" rug", 0.025)]
TAIL = 990
HISTORY = [0]  # " mat"


def tokens() -> list[str]:
    return [t for t, _ in HEAD] + [f"<tail {i}>" for i in range(TAIL)]


def logits() -> torch.Tensor:
    """``[1, 1000]`` logits: log-probabilities of the head, a geometric tail for the rest."""
    rest = 1 - sum(p for _, p in HEAD)
    weights = [0.995**i for i in range(TAIL)]
    total = sum(weights)
    probs = [p for _, p in HEAD] + [rest * w / total for w in weights]
    return torch.tensor([[math.log(p) for p in probs]], dtype=torch.float32)
