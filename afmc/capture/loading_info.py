"""Check what transformers' from_pretrained reports about a checkpoint's tensors.

transformers fills a tensor the checkpoint lacks with random values and only
logs it (afmc keeps its logs quiet), and hides a shape mismatch behind "look
at the above report". Rules, for `output_loading_info=True,
ignore_mismatched_sizes=True`:

- a tensor of the model missing from the checkpoint is an error naming the
  model directory and the first few missing names (a tied lm_head and buffers
  that are not saved, such as rotary inv_freq, are not reported missing);
- a tensor whose checkpoint shape differs from the config's is an error
  naming the tensor and both shapes;
- checkpoint tensors the model does not use are a named InputWarning.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from afmc.io.user_errors import CaptureError, InputWarning

SHOWN = 3


def check_loading_info(path: Path, info: dict[str, Any]) -> None:
    """Raise CaptureError or warn for `info` of the checkpoint at `path` (the rules above)."""
    mismatched = sorted(info.get("mismatched_keys") or (), key=lambda item: item[0])
    if mismatched:
        name, stored, expected = mismatched[0]
        raise CaptureError(f"{path}: tensor {name} has shape {list(stored)} in the checkpoint "
                           f"but the config needs {list(expected)}{_more(len(mismatched))}")
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        raise CaptureError(f"{path}: the checkpoint lacks {len(missing)} tensor(s) the config "
                           f"needs ({_names(missing)}); the model would be randomly "
                           "initialised")
    unexpected = sorted(info.get("unexpected_keys") or ())
    if unexpected:
        warnings.warn(f"{path}: the checkpoint holds {len(unexpected)} tensor(s) the model "
                      f"does not use ({_names(unexpected)}); they are ignored",
                      InputWarning, stacklevel=2)


def _names(names: Iterable[str]) -> str:
    names = list(names)
    shown = ", ".join(names[:SHOWN])
    return shown + (f", ... {len(names) - SHOWN} more" if len(names) > SHOWN else "")


def _more(count: int) -> str:
    return f" (and {count - 1} more mismatched)" if count > 1 else ""
