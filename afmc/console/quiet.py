"""Keep library chatter (progress bars, deprecation notices, optional-dependency logs)
out of afmc's output. Called by the CLI and the benchmark scripts for the whole process;
the Python API holds it for the duration of one call (`libraries_quiet`) and gives the
caller's settings back afterwards.

Rule: nothing heavy is imported here (a CLI error must not wait for torch):
transformers and huggingface_hub read TRANSFORMERS_VERBOSITY and
HF_HUB_DISABLE_PROGRESS_BARS when they are imported, and are set directly only
when they already are.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from collections.abc import Iterator

_ENVIRONMENT = ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")
_EXPORTER_LOG = "torch.onnx._internal.exporter._registration"


def quiet_libraries() -> None:
    """Silence transformers' progress bars and info logs, torch.onnx's torchvision notices,
    and FutureWarnings raised inside torch."""
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        transformers = sys.modules["transformers"]
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    logging.getLogger(_EXPORTER_LOG).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")


@contextlib.contextmanager
def libraries_quiet(verbose: bool = False) -> Iterator[None]:
    """quiet_libraries() for the block (nothing when `verbose`): the warning filters, the
    environment, the exporter's log level and transformers' verbosity and progress bar are
    the caller's again afterwards (transformers first imported inside the block is left at
    its default verbosity, warning)."""
    if verbose:
        yield
        return
    environment = {name: os.environ.get(name) for name in _ENVIRONMENT}
    exporter = logging.getLogger(_EXPORTER_LOG)
    level = exporter.level
    transformers = sys.modules.get("transformers")
    verbosity = transformers.utils.logging.get_verbosity() if transformers else logging.WARNING
    bars = transformers.utils.logging.is_progress_bar_enabled() if transformers else True
    hub = sys.modules.get("huggingface_hub")
    hub_bars = not hub.utils.are_progress_bars_disabled() if hub else True
    try:
        with warnings.catch_warnings():
            quiet_libraries()
            yield
    finally:
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
        exporter.setLevel(level)
        if "transformers" in sys.modules:
            logs = sys.modules["transformers"].utils.logging
            logs.set_verbosity(verbosity)
            if bars:
                logs.enable_progress_bar()
        if hub_bars and "huggingface_hub" in sys.modules:
            sys.modules["huggingface_hub"].utils.enable_progress_bars()
