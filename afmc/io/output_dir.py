"""Output directories: where afmc may write one, and publishing it without losing data.

Rules:

- `check_output`, before any work: OUT may not be, hold, or lie inside an input
  (a model directory or file, an ONNX file's external data, a calibration
  file, ...), nor be or hold the current directory (`-o .`, `-o ..`, `-o /`).
  Paths are compared with symlinks resolved; the error names both paths.
- `staged_output`: the block writes into a fresh staging directory
  `.OUT.tmp-*` beside OUT, which becomes OUT when the block ends without error.
  On an error, SIGINT or SIGTERM (interrupts.signals_raise) the staging
  directory is removed and the exception goes on; OUT is left as it was.
- `publish_directory`: without `force` nothing is ever replaced: an OUT that
  appeared while the block ran (another compile; an empty directory too) is an
  error. On Linux this holds even in a race (renameat2 RENAME_NOREPLACE);
  elsewhere OUT is checked just before os.rename. With `force` an existing OUT
  is exchanged atomically for the new one (RENAME_EXCHANGE; elsewhere moved
  aside into `.OUT.old-*` first) and then deleted. Signals wait until
  publishing is done (interrupts.deferred).
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path

from afmc.io.interrupts import deferred, signals_raise

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_ADVICE = "choose an output outside it"


def check_output(output: str | os.PathLike, inputs: Sequence[str | os.PathLike] = ()) -> None:
    """Raise ValueError when `output` would overwrite an input or the current directory.

    See the module rules; inputs that do not exist are skipped.
    """
    out = Path(output).resolve()
    here = Path.cwd().resolve()
    if out == here:
        raise ValueError(f"{output}: is the current directory; choose a new output directory")
    if out in here.parents:
        raise ValueError(f"{output}: holds the current directory {here}; choose a new output "
                         "directory")
    for given in inputs:
        if not os.path.lexists(given):
            continue
        source = Path(given).resolve()
        if out == source:
            raise ValueError(f"{output}: is the input {given}; {_ADVICE}")
        if out in source.parents:
            raise ValueError(f"{output}: holds the input {given}; {_ADVICE}")
        if source in out.parents:
            raise ValueError(f"{output}: lies inside the input {given}; {_ADVICE}")
        if out.is_file() and source.suffix.lower() == ".onnx":
            from afmc.io.input_files import external_data_files

            if out in (data.resolve() for data in external_data_files(source)):
                raise ValueError(f"{output}: is the external data of the input {given}; "
                                 f"{_ADVICE}")


@contextmanager
def staged_output(output: str | os.PathLike | None, force: bool,
                  inputs: Sequence[str | os.PathLike] = ()) -> Iterator[Path | None]:
    """A staging directory that becomes `output` when the block succeeds (module rules).

    `output` None: no output, the block gets None. `inputs`: the paths the block
    reads, which `output` must keep clear of (check_output).
    """
    if output is None:
        yield None
        return
    target = Path(output)
    check_output(target, inputs)
    with signals_raise():
        staged = None
        try:
            with deferred():
                staged = stage_directory(target, force)
            yield staged
            with deferred():
                publish_directory(staged, target, force)
        except BaseException:
            if staged is not None:
                _remove(staged)
            raise


class OutputExistsError(FileExistsError):
    """The output directory exists and overwriting was not asked for. The message names the
    Python argument (``force=True``); `cli_message` names the command line's flag."""

    def __init__(self, message: str, remedy: str = "force=True overwrites it",
                 cli_remedy: str = "use --force to overwrite") -> None:
        super().__init__(f"{message} ({remedy})")
        self.cli_message = f"{message} ({cli_remedy})"


def stage_directory(target: Path, force: bool) -> Path:
    """A fresh temporary directory beside `target`, to be published with publish_directory."""
    if os.path.lexists(target) and not force:
        raise OutputExistsError(f"{target}: output exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-"))
    staged.chmod(0o755)
    return staged


def publish_directory(staged: Path, target: Path, force: bool) -> None:
    """Move the fully written `staged` directory to `target` (module rules)."""
    try:
        _rename_noreplace(staged, target)
        return
    except FileExistsError:
        if not force:
            raise OutputExistsError(f"{target}: appeared while compiling (another compile?); "
                                    "nothing overwritten", "force=True overwrites it",
                                    "use --force") from None
    if _renameat2(staged, target, _RENAME_EXCHANGE):
        _remove(staged)  # it holds the previous output now
        return
    old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    try:
        os.replace(target, old / "previous")
        try:
            os.replace(staged, target)
        except BaseException:
            os.replace(old / "previous", target)
            raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def _rename_noreplace(source: Path, target: Path) -> None:
    """Rename `source` to `target`; FileExistsError if `target` exists (a file, a directory)."""
    if _renameat2(source, target, _RENAME_NOREPLACE):
        return
    if os.path.lexists(target):  # os.rename would replace an empty directory
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), str(target))
    os.rename(source, target)


def _renameat2(source: Path, target: Path, flags: int) -> bool:
    """renameat2(2) with `flags`; False where the system or the file system lacks it."""
    function = _libc_renameat2()
    if function is None:
        return False
    if function(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(source), None, str(target))


@cache
def _libc_renameat2() -> Callable[..., int] | None:
    """glibc's renameat2 (Linux, glibc 2.28 and later), or None."""
    if not sys.platform.startswith("linux"):
        return None
    function = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if function is not None:
        function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p,
                             ctypes.c_uint]
        function.restype = ctypes.c_int
    return function


def _remove(path: Path) -> None:
    """Delete `path`: a directory tree, or a file or link."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
