"""Shared test setup for the sampler-core suite: one CPU thread, so float reductions (and timings)
are the same on every run."""

import torch

torch.set_num_threads(1)
