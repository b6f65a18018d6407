"""NoiseConfig.pcm_scale: the pcm programming-noise std is pcm_scale * sigma(|g|)."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from afmc.runtime.noise import NoiseConfig, layer_rng, pcm_sigma, program_weights

GMAX = 180.0


def _noise_in_conductance(level: float, seed: int = 0, **config) -> np.ndarray:
    """Programmed minus target conductance of 100 x 1000 weights at target |g| = level
    (each row's max |w| is 1 in column 0, i.e. |g| = GMAX)."""
    w = np.full((100, 1001), level / GMAX, dtype=np.float32)
    w[:, 1::2] *= -1
    w[:, 0] = 1.0
    out = program_weights(w, [w.shape[1]], NoiseConfig(model="pcm", per_slice=False, **config),
                          layer_rng(seed, 0))
    return ((out.astype(np.float64) - w) * GMAX)[:, 1:]


@pytest.mark.parametrize("scale", [0.5, 2.0, 4.0])
@pytest.mark.parametrize("level", [10.0, 52.5, 120.0])
def test_pcm_std_is_scale_times_sigma(level, scale):
    noise = _noise_in_conductance(level, pcm_scale=scale)
    expected = scale * float(pcm_sigma(np.array(level)))
    assert noise.std() == pytest.approx(expected, rel=0.03)
    assert abs(noise.mean()) < 5 * expected / np.sqrt(noise.size)


def test_scale_multiplies_the_same_draw():
    """Same seed: the noise at scale s is exactly s times the noise at scale 1."""
    base = _noise_in_conductance(30.0)
    np.testing.assert_allclose(_noise_in_conductance(30.0, pcm_scale=4.0), 4.0 * base,
                               rtol=1e-4, atol=1e-3)


def test_default_scale_is_the_afm_model():
    assert NoiseConfig().pcm_scale == 1.0
    np.testing.assert_array_equal(_noise_in_conductance(30.0, pcm_scale=1.0),
                                  _noise_in_conductance(30.0))


def test_zeroing_rule_does_not_scale():
    """Weights with target |g| < 0.6 are zeroed whatever the scale."""
    w = np.tile(np.array([GMAX, 0.3, -0.5, 0.7], dtype=np.float32) / GMAX, (50, 1))
    out = program_weights(w, [4], NoiseConfig(model="pcm", pcm_scale=4.0), layer_rng(1, 0))
    assert np.all(out[:, 1:3] == 0.0)
    assert np.all(out[:, 3] != 0.0)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_scale_must_be_positive_and_finite(bad):
    with pytest.raises(ValidationError):
        NoiseConfig(pcm_scale=bad)
