"""Glue from a run to the diagnostics: the calibration's training pairs are joined as the run's
training joined them."""

from types import SimpleNamespace

import jax
import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from flowmatch import couplings
from flowmatch.diagnostics import runs as diag_runs


class _Toy:
    kind = "toy2d"

    def sample_reference(self, key, n):
        return np.asarray(jax.random.normal(key, (n, 2))) * 0.5 + 3.0


class _Pairs:
    kind, num_examples = "toy2d", 300

    def __init__(self):
        self.x0 = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
        self.x1 = self.x0 * 2.0 + 1.0  # x1 is a function of its own x0
        self.label = np.zeros(300, np.int32)


def _fake_comps(coupling, batch_size=64):
    """What training_pairs reads of a run's components: its coupling, batch size and whether
    it is class-conditional."""
    settings = SimpleNamespace(coupling=couplings.CouplingSettings(name=coupling),
                               train=SimpleNamespace(batch_size=batch_size))
    return SimpleNamespace(settings=settings, conditional=False)


def test_calibration_pairs_are_joined_as_in_training():
    """The calibration's forward-process states use the run's own pairing: an exact OT coupling
    permutes the noise within each training-batch block to the optimal assignment; stored pairs
    (reflow) are used as stored."""
    noise = np.asarray(jax.random.normal(jax.random.PRNGKey(1), (160, 2)), np.float32)
    key = jax.random.PRNGKey(2)
    x0, x1, labels = diag_runs.training_pairs(_fake_comps("independent"), _Toy(), key, noise)
    np.testing.assert_array_equal(x0, noise)
    assert labels is None
    x0_ot, x1_ot, _ = diag_runs.training_pairs(_fake_comps("exact"), _Toy(), key, noise)
    np.testing.assert_array_equal(x1_ot, x1)  # same data, re-paired noise
    for start in (0, 64, 128):  # blocks of batch_size rows; the last one is short
        rows = slice(start, min(start + 64, 160))
        assert sorted(map(tuple, x0_ot[rows])) == sorted(map(tuple, noise[rows]))
        cost = ((x1[rows][:, None] - noise[rows][None]) ** 2).sum(-1)
        r, c = linear_sum_assignment(cost)
        assert ((x1_ot[rows] - x0_ot[rows]) ** 2).sum() == pytest.approx(cost[r, c].sum(), 1e-4)
        assert cost[r, c].sum() < ((x1[rows] - noise[rows]) ** 2).sum()
    p0, p1, _ = diag_runs.training_pairs(_fake_comps("independent"), _Pairs(), key,
                                           noise[:100])
    assert p0.shape == (100, 2)
    np.testing.assert_allclose(p1, p0 * 2.0 + 1.0)
