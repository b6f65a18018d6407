"""One-line messages for the errors and warnings a user's input causes.

Rules:
- An error the user caused is printed as one line, ``error: MESSAGE``. The
  user-error types are OSError, ValueError (UnicodeDecodeError and
  json.JSONDecodeError included), KeyError and the afmc error classes
  (CaptureError, ConfigError, VerificationError). Anything else is a bug and
  keeps its traceback.
- An OSError the operating system raised (it carries a file name) reads
  ``FILE: strerror`` (``FILE -> FILE2: strerror`` for a rename), never its
  errno; one afmc raised with a message reads as that message.
- A KeyError names the missing key (one afmc raised with a message reads as that
  message).
- Only the first line of a multi-line message is printed; a file name longer
  than 160 characters is shortened in the middle.
- Input that is suspicious but usable raises an ``InputWarning``; the CLI
  prints each as one line, ``warning: MESSAGE``.
"""

from __future__ import annotations

import sys

NAME_LIMIT = 160

# (module, class) of afmc's own user-error types; looked up in sys.modules, so that
# checking an error imports nothing (an error of a module never imported cannot occur).
_AFMC_ERRORS = (
    ("afmc.config", "ConfigError"),
    ("afmc.passes.verify", "VerificationError"),
)


class CaptureError(Exception):
    """A model could not be loaded or traced into a graph.

    The message is one line that names what failed: the file, the architecture,
    or the module and operation that torch.export could not trace.
    """


class InputWarning(UserWarning):
    """Input that is usable but suspicious (e.g. unused tensors in a checkpoint)."""


class KernelWarning(InputWarning):
    """afmc's fused runtime kernels cannot be built or loaded here (afmc.runtime.fused);
    chips run the stock ONNX bodies instead, with the same results, more slowly."""


def is_user_error(error: BaseException) -> bool:
    """Whether `error` is one a user's input causes (see the module rules)."""
    if isinstance(error, (OSError, ValueError, KeyError, CaptureError)):
        return True
    for module_name, class_name in _AFMC_ERRORS:
        module = sys.modules.get(module_name)
        if module is not None and isinstance(error, getattr(module, class_name)):
            return True
    return False


def user_message(error: BaseException) -> str:
    """The one-line message of a user error (see the module rules)."""
    if isinstance(error, OSError) and error.filename is not None:
        names = _short(error.filename)
        if error.filename2 is not None:
            names += f" -> {_short(error.filename2)}"
        return f"{names}: {error.strerror or type(error).__name__}"
    if isinstance(error, KeyError):
        key = error.args[0] if error.args else "?"
        if isinstance(key, str) and " " in key:  # afmc's own message ("unknown target ...")
            return first_line(key, None)
        return f"missing key {key!r}"
    if isinstance(error, UnicodeDecodeError):
        return (f"not {error.encoding} text (byte 0x{error.object[error.start]:02x} at "
                f"offset {error.start})")
    if isinstance(error, OSError) and len(error.args) == 1:
        return first_line(str(error.args[0]), None)
    return first_line(error, None)


def _short(name: object) -> str:
    text = str(name)
    if len(text) <= NAME_LIMIT:
        return text
    half = NAME_LIMIT // 2 - 2
    return f"{text[:half]}...{text[-half:]}"


def first_line(error: BaseException | str, limit: int | None = 300) -> str:
    """The first non-empty line of an exception's message (its type name when it has
    none) or of a text (empty when it has none), shortened to `limit` characters."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ("" if isinstance(error, str) else type(error).__name__)
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
