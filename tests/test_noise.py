"""noise.uniform (int64 tensor SplitMix64) must equal its pure-Python twin bit for bit."""

from __future__ import annotations

import itertools

import pytest
import torch

from temperance import noise

SEEDS = [0, 1, 2, 12345, 2**31 - 1, 2**32, 2**32 + 1, 2**62, 2**63 - 2, 2**63 - 1,
         0x5DEECE66D, 0x0123456789ABCDEF]
STEPS = [0, 1, 2, 7, 1000, 2**20, 2**31, 2**40 + 3]
INDICES = [0, 1, 2, 3, 127, 128, 129, 50_000, 128_255, 2**20 + 5, 2**31 - 1]


@pytest.mark.parametrize("salt", [noise.SALT_PICK, noise.SALT_XTC])
def test_uniform_equals_reference_on_a_grid(salt):
    grid = list(itertools.product(SEEDS, STEPS))
    seed = torch.tensor([s for s, _ in grid], dtype=torch.int64)
    step = torch.tensor([t for _, t in grid], dtype=torch.int64)
    index = torch.tensor(INDICES, dtype=torch.int64).expand(len(grid), -1)
    u = noise.uniform(seed, step, index, salt)
    assert u.dtype == torch.float64 and u.shape == (len(grid), len(INDICES))
    for r, (s, t) in enumerate(grid):
        for c, i in enumerate(INDICES):
            assert u[r, c].item() == noise.reference_uniform(s, t, i, salt), (s, t, i, salt)


def test_salts_give_different_streams():
    seed, step = torch.tensor([7]), torch.tensor([3])
    idx = torch.arange(64).view(1, -1)
    assert not torch.equal(noise.uniform(seed, step, idx, noise.SALT_PICK),
                           noise.uniform(seed, step, idx, noise.SALT_XTC))


def test_uniform_in_open_unit_interval_and_depends_on_each_coordinate():
    idx = torch.arange(4096).view(1, -1)
    u = noise.uniform(torch.tensor([5]), torch.tensor([9]), idx)
    assert bool(((u > 0) & (u < 1)).all())
    assert len(set(u.view(-1).tolist())) == 4096  # 53-bit values: no collisions expected
    # every coordinate changes the value
    assert u[0, 0] != noise.uniform(torch.tensor([6]), torch.tensor([9]), idx)[0, 0]
    assert u[0, 0] != noise.uniform(torch.tensor([5]), torch.tensor([10]), idx)[0, 0]
    assert u[0, 0] != u[0, 1]
    # mean / variance of U(0,1) (4096 draws: se of the mean ~ 0.0045)
    assert abs(u.mean().item() - 0.5) < 0.02
    assert abs(u.var().item() - 1 / 12) < 0.01


def test_coin_is_the_xtc_salted_uniform_at_index_0():
    seed = torch.tensor([0, 1, 2**63 - 1])
    step = torch.tensor([0, 5, 9])
    c = noise.coin(seed, step, noise.SALT_XTC)
    assert c.shape == (3,)
    for i in range(3):
        assert c[i].item() == noise.reference_uniform(int(seed[i]), int(step[i]), 0, noise.SALT_XTC)


def test_gumbel_is_minus_log_minus_log_uniform():
    seed, step = torch.tensor([3, 4]), torch.tensor([1, 1])
    idx = torch.arange(10).expand(2, -1)
    g = noise.gumbel(seed, step, idx)
    u = noise.uniform(seed, step, idx)
    assert g.dtype == torch.float64
    assert torch.equal(g, -torch.log(-torch.log(u)))
