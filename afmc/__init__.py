"""afmc: the Analog Foundation Model Compiler.

``afmc.compile(model, target="aimc", config=...)`` compiles a model;
``afmc.load(out_dir)`` opens a compiled model once: ``.chip(seed)``, ``.fp_view()``,
``.run(...)``.
Both are imported on first use, so ``import afmc`` stays light.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

__all__ = ["__version__", "compile", "load"]

try:
    __version__ = version("afmc")
except PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "load":  # the runtime alone: opening a compiled model imports no compiler
        from afmc.runtime.compiled import load

        return load
    if name == "compile":
        from afmc import api

        return api.compile
    raise AttributeError(f"module 'afmc' has no attribute {name!r}")
