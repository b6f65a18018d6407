"""Fused analog kernels: one library built from analog.cc (an onnxruntime custom-op
library) and programming.cc (chip programming, called through ctypes by
fused.programming).

Rules:
- The library is compiled on first use with the system C++ compiler ($CXX, else g++)
  into the cache directory ($AFMC_CACHE/kernels, else ~/.cache/afmc/kernels), named
  by a hash of the sources, the compiler flags, the compiler's version and the machine
  (its architecture, CPU model and CPU flags: -march=native); it is written to a temporary file
  and renamed, so processes building at once each see a whole library.
- `AFMC_KERNELS=0` turns the kernels off. No compiler, a failed build or a library
  onnxruntime cannot load gives one KernelWarning per process, and None: chips then
  run the stock ONNX bodies and program in numpy, with the same outputs.
- Only chip sessions register the library (SessionOptions.register_custom_ops_library);
  the ONNX file afmc writes never names the domain, so a stock onnxruntime runs it.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import onnxruntime as ort

from afmc.io.user_errors import KernelWarning, first_line

DOMAIN = "afmc.kernels"
SOURCES = (Path(__file__).with_name("analog.cc"), Path(__file__).with_name("programming.cc"))
FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math",
         "-fopenmp-simd", "-std=c++17", "-shared", "-fPIC")


def enabled() -> bool:
    """Whether chips use the fused kernels: not turned off by AFMC_KERNELS=0, and built
    and loadable here."""
    return os.environ.get("AFMC_KERNELS", "1") != "0" and library() is not None


def register(options: ort.SessionOptions) -> None:
    """Add the fused kernels' domain to `options` (enabled() must hold)."""
    path = library()
    if path is None:
        raise RuntimeError("afmc.kernels: the library is not available")
    options.register_custom_ops_library(str(path))


@functools.cache
def library() -> Path | None:
    """The built library (built on first use), or None with one KernelWarning."""
    try:
        path = _build()
        ort.SessionOptions().register_custom_ops_library(str(path))
        return path
    except (OSError, subprocess.SubprocessError, RuntimeError) as error:
        warnings.warn(f"afmc.kernels unavailable, chips run the stock ONNX bodies "
                      f"({first_line(error)})", KernelWarning, stacklevel=2)
        return None
    except Exception as error:  # onnxruntime's own error types derive from Exception only
        if not type(error).__module__.startswith("onnxruntime"):
            raise
        warnings.warn(f"afmc.kernels: onnxruntime cannot load the library, chips run the "
                      f"stock ONNX bodies ({first_line(error)})", KernelWarning, stacklevel=2)
        return None


def cache_dir() -> Path:
    """Where built libraries are kept: $AFMC_CACHE/kernels, else ~/.cache/afmc/kernels."""
    root = os.environ.get("AFMC_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "afmc") / "kernels"


def _build() -> Path:
    """The library for this source, compiler and machine, compiled if not cached."""
    compiler = shutil.which(os.environ.get("CXX", "g++"))
    if compiler is None:
        raise OSError("no C++ compiler found (set CXX or install g++)")
    version = subprocess.run([compiler, "--version"], capture_output=True, text=True,
                             check=True, timeout=60).stdout.splitlines()[0]
    key = hashlib.sha256("\0".join([
        *(source.read_text() for source in SOURCES), " ".join(FLAGS), version,
        platform.machine(), _cpu_model(),
    ]).encode()).hexdigest()[:20]
    target = cache_dir() / f"afmc_kernels-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=target.parent)
    os.close(handle)
    try:
        result = subprocess.run([compiler, *FLAGS, "-o", temporary, *map(str, SOURCES)],
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"{compiler} failed on the kernels: "
                               f"{first_line(result.stderr.strip() or 'no output')}")
        os.replace(temporary, target)
    finally:
        Path(temporary).unlink(missing_ok=True)
    return target


def _cpu_model() -> str:
    """The CPU's model name and feature flags (/proc/cpuinfo: what -march=native sees), or
    the processor string elsewhere."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    wanted = [line for line in lines if line.startswith(("model name", "flags"))][:2]
    return "\n".join(wanted) or platform.processor()
