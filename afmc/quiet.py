"""Keep library chatter (progress bars, deprecation notices, optional-dependency logs)
out of afmc's output. Called by the CLI and the benchmark scripts."""

from __future__ import annotations

import logging
import warnings


def quiet_libraries() -> None:
    """Silence transformers' progress bars and info logs, torch.onnx's torchvision notices,
    and FutureWarnings raised inside torch."""
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=UserWarning, module="torch")
