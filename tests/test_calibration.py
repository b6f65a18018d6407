"""Calibration of static input ranges: the three methods against their definitions,
and calibration data from text, .npy, .npz and .pt files."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import afmc.api
from afmc.config import load_config
from afmc.ops.analog_linear import ANALOG_LINEAR


class TwoInputMLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Linear(24, 40)
        self.second = nn.Linear(40 + 8, 6)

    def forward(self, x: torch.Tensor, extra: torch.Tensor) -> torch.Tensor:
        return self.second(torch.cat([torch.relu(self.first(x)), extra], dim=-1))


def _data(samples: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return (torch.randn(samples, 24, generator=generator) * 3,
            torch.randn(samples, 8, generator=generator))


def _ranges(result) -> list[torch.Tensor]:
    return [result.program.get_parameter(n.args[2].target).detach()
            for n in result.program.graph.nodes if n.target is ANALOG_LINEAR]


def _compile(method: str, calibration, **overrides):
    torch.manual_seed(0)
    settings = [f"calibration.method={method}", "hardware.max_in=16",
                "calibration.batch_size=16"]
    settings += [f"calibration.{k}={v}" for k, v in overrides.items()]
    return afmc.api.compile(TwoInputMLP().eval(), "aimc", load_config(None, settings),
                            example_inputs=tuple(t[:4] for t in _data()),
                            calibration=calibration,
                            skip=["chip-smooth-inputs", "split-outliers"])


@pytest.mark.slow
def test_methods_follow_their_definitions():
    x, extra = _data()
    batches = [(x[i:i + 16], extra[i:i + 16]) for i in range(0, 64, 16)]
    first_slices = torch.split(x, [12, 12], dim=-1)
    maximum = _ranges(_compile("max", batches))[0]
    torch.testing.assert_close(maximum, torch.stack([s.abs().max() for s in first_slices]))
    percentile = _ranges(_compile("percentile", batches, percentile=90.0))[0]
    expected = [np.percentile(s.abs().numpy(), 90.0) for s in first_slices]
    np.testing.assert_allclose(percentile.numpy(), expected, rtol=1e-5)
    kappa = _ranges(_compile("kappa-std", batches, kappa=3.0))[0]
    stds = [[float(b[0][:, :12].std()), float(b[0][:, 12:].std())] for b in batches]
    np.testing.assert_allclose(kappa.numpy(), 3.0 * np.mean(stds, axis=0), rtol=1e-5)
    assert bool((percentile < maximum).all())


@pytest.mark.slow
def test_tensor_files(tmp_path):
    x, extra = _data()
    reference = _ranges(_compile("max", [(x, extra)]))
    np.savez(tmp_path / "calib.npz", x=x.numpy(), extra=extra.numpy())
    torch.save({"x": x, "extra": extra}, tmp_path / "calib.pt")
    for name in ("calib.npz", "calib.pt"):
        got = _ranges(_compile("max", tmp_path / name))
        for a, b in zip(got, reference, strict=True):
            torch.testing.assert_close(a, b)
    np.save(tmp_path / "one.npy", x.numpy())
    with pytest.raises(ValueError, match="one array given"):
        _compile("max", tmp_path / "one.npy")
    np.savez(tmp_path / "partial.npz", x=x.numpy())
    with pytest.raises(ValueError, match=r"\(missing \['extra'\]\)"):
        _compile("max", tmp_path / "partial.npz")
    (tmp_path / "bad.npy").write_bytes(b"not numpy")
    with pytest.raises(ValueError, match="bad.npy: cannot read"):
        _compile("max", tmp_path / "bad.npy")


@pytest.mark.slow
def test_text_calibration_uses_the_tokenizer(model_dirs, calibration_text):
    result = afmc.api.compile(str(model_dirs["llama"]), "aimc", calibration=calibration_text)
    assert result.record["calibration"] == str(calibration_text)
    assert all(layer.calibrated == "search" for layer in result.layers)


@pytest.mark.slow
def test_multi_input_chip(tmp_path):
    x, extra = _data(8)
    torch.manual_seed(0)
    afmc.api.compile(TwoInputMLP().eval(), "aimc", example_inputs=(x[:4], extra[:4]),
                     calibration=[(x, extra)], output=tmp_path / "out")
    chip = afmc.api.load(tmp_path / "out").chip(1)
    assert chip.run(x[:4].numpy(), extra[:4].numpy()).shape == (4, 6)  # captured static shapes
    with pytest.raises(ValueError, match=r"takes 2 input\(s\) \(x, extra\), got 1"):
        chip.run(x.numpy())
