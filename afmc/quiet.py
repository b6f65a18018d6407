"""Keep library chatter (progress bars, deprecation notices, optional-dependency logs)
out of afmc's output. Called by the CLI and the benchmark scripts.

Rule: nothing heavy is imported here (a CLI error must not wait for torch):
transformers and huggingface_hub read TRANSFORMERS_VERBOSITY and
HF_HUB_DISABLE_PROGRESS_BARS when they are imported, and are set directly only
when they already are.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings


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
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
