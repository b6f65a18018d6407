"""`afmc lm-eval ARGS`: lm-eval's own command line with the model type "afmc" registered.

Rules:
- lm-eval is the project's extra: missing, it is one error naming the install command
  (`pip install -e '.[lm-eval]'` in the afmc checkout; afmc is not on the package index).
- Standard tasks read their data from the Hugging Face Hub. When the user has not chosen
  (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE unset) and the Hub's host does not answer within
  HUB_TIMEOUT seconds, both are set, so that cached data still loads and a task whose data
  is not cached fails at once instead of retrying for most of a minute.
- A task whose data cannot be had from the Hub is one error that names the dataset and
  points at tasks over local files (`--include_path DIR`, docs/lm-eval.md).
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from urllib.parse import urlparse

HUB_TIMEOUT = 3.0
_OFFLINE = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
# what huggingface_hub and datasets raise when the Hub is out of reach or switched off
_HUB_ERRORS = ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "ConnectionError",
               "DatasetNotFoundError")
LOCAL_TASKS = ("use a task over local files instead: --include_path DIR with a task YAML "
               "reading JSON/JSONL (docs/lm-eval.md, 'A task over local files')")


def run_lm_eval(args: Sequence[str]) -> None:
    """Run lm-eval's command line on `args` with "afmc" registered (module rules)."""
    if find_spec("lm_eval") is None:
        raise ValueError("afmc lm-eval needs lm-eval 0.4, the project's extra: "
                         "pip install -e '.[lm-eval]' in the afmc checkout")
    if not any(os.environ.get(name) for name in _OFFLINE) and not hub_reachable():
        for name in _OFFLINE:
            os.environ[name] = "1"
    from lm_eval.__main__ import cli_evaluate

    import afmc.eval.lm_eval_model  # noqa: F401  (registers the model type "afmc")

    argv, sys.argv = sys.argv, ["lm-eval", *args]
    try:
        cli_evaluate()
    except Exception as error:
        if type(error).__name__ in _HUB_ERRORS or "on the Hub" in str(error):
            raise ValueError(f"a task's data is not here and the Hugging Face Hub cannot be "
                             f"reached ({str(error).splitlines()[0]}): {LOCAL_TASKS}") from error
        raise
    finally:
        sys.argv = argv


def hub_reachable(timeout: float = HUB_TIMEOUT) -> bool:
    """Whether the Hub's host (HF_ENDPOINT, else huggingface.co) accepts a connection."""
    endpoint = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    try:
        with socket.create_connection((endpoint.hostname or "huggingface.co", port),
                                      timeout=timeout):
            return True
    except OSError:
        return False
