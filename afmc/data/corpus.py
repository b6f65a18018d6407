"""The built-in text corpus: the Python standard library's own source files.

Every Python installation carries its standard library as ``.py`` source, so
this corpus needs no download. The splits are fixed lists of paths relative
to ``sysconfig.get_paths()["stdlib"]``; every path exists in CPython 3.10
through 3.13 (modules that were removed, split into packages or
are left out by some Linux distributions, such as ``tkinter``, ``turtle``,
``distutils``, ``lib2to3``, ``zipfile``, ``pathlib``, ``datetime``,
``sysconfig``, ``ensurepip`` and ``test``, are not used).

- ``"train"``: ``TRAIN_FILES`` (about 6.2 MB on CPython 3.11) trains ``afmc-tiny``.
- ``"heldout"``: ``HELDOUT_FILES`` (about 320 KB), disjoint from the training
  files, evaluates perplexity.
- ``"calibration"``: ``CALIBRATION_FILES`` (about 90 KB), a small subset of the
  training files, feeds calibration (activation ranges, input statistics) so
  that it never sees held-out text and needs no 6 MB read.

File contents differ slightly between Python versions, so perplexities are
comparable only on the same interpreter version.
"""

from __future__ import annotations

import sysconfig
from pathlib import Path
from typing import Literal

Split = Literal["train", "heldout", "calibration"]

HELDOUT_FILES: tuple[str, ...] = (
    "argparse.py",
    "difflib.py",
    "textwrap.py",
    "ipaddress.py",
    "fractions.py",
    "csv.py",
)

_TRAIN_PACKAGE_FILES: tuple[str, ...] = (
    "asyncio/base_events.py",
    "asyncio/base_subprocess.py",
    "asyncio/coroutines.py",
    "asyncio/events.py",
    "asyncio/exceptions.py",
    "asyncio/futures.py",
    "asyncio/locks.py",
    "asyncio/proactor_events.py",
    "asyncio/protocols.py",
    "asyncio/queues.py",
    "asyncio/runners.py",
    "asyncio/selector_events.py",
    "asyncio/sslproto.py",
    "asyncio/streams.py",
    "asyncio/subprocess.py",
    "asyncio/tasks.py",
    "asyncio/transports.py",
    "asyncio/unix_events.py",
    "collections/__init__.py",
    "concurrent/futures/_base.py",
    "concurrent/futures/process.py",
    "concurrent/futures/thread.py",
    "ctypes/__init__.py",
    "email/_encoded_words.py",
    "email/_header_value_parser.py",
    "email/_parseaddr.py",
    "email/_policybase.py",
    "email/base64mime.py",
    "email/charset.py",
    "email/contentmanager.py",
    "email/encoders.py",
    "email/errors.py",
    "email/feedparser.py",
    "email/generator.py",
    "email/header.py",
    "email/headerregistry.py",
    "email/iterators.py",
    "email/message.py",
    "email/parser.py",
    "email/policy.py",
    "email/quoprimime.py",
    "email/utils.py",
    "html/__init__.py",
    "html/parser.py",
    "http/__init__.py",
    "http/client.py",
    "http/cookiejar.py",
    "http/cookies.py",
    "http/server.py",
    "importlib/__init__.py",
    "importlib/_bootstrap.py",
    "importlib/_bootstrap_external.py",
    "importlib/metadata/__init__.py",
    "importlib/util.py",
    "json/__init__.py",
    "json/decoder.py",
    "json/encoder.py",
    "json/scanner.py",
    "json/tool.py",
    "logging/__init__.py",
    "logging/config.py",
    "logging/handlers.py",
    "multiprocessing/connection.py",
    "multiprocessing/context.py",
    "multiprocessing/forkserver.py",
    "multiprocessing/heap.py",
    "multiprocessing/managers.py",
    "multiprocessing/pool.py",
    "multiprocessing/process.py",
    "multiprocessing/queues.py",
    "multiprocessing/reduction.py",
    "multiprocessing/resource_tracker.py",
    "multiprocessing/shared_memory.py",
    "multiprocessing/sharedctypes.py",
    "multiprocessing/spawn.py",
    "multiprocessing/synchronize.py",
    "multiprocessing/util.py",
    "unittest/async_case.py",
    "unittest/case.py",
    "unittest/loader.py",
    "unittest/main.py",
    "unittest/mock.py",
    "unittest/result.py",
    "unittest/runner.py",
    "unittest/signals.py",
    "unittest/suite.py",
    "unittest/util.py",
    "urllib/error.py",
    "urllib/parse.py",
    "urllib/request.py",
    "urllib/response.py",
    "urllib/robotparser.py",
    "wsgiref/handlers.py",
    "wsgiref/headers.py",
    "wsgiref/simple_server.py",
    "wsgiref/util.py",
    "wsgiref/validate.py",
    "xml/dom/expatbuilder.py",
    "xml/dom/minidom.py",
    "xml/dom/pulldom.py",
    "xml/etree/ElementPath.py",
    "xml/etree/ElementTree.py",
    "xml/sax/expatreader.py",
    "xml/sax/handler.py",
    "xml/sax/saxutils.py",
    "xml/sax/xmlreader.py",
    "xmlrpc/client.py",
    "xmlrpc/server.py",
    "zoneinfo/_zoneinfo.py",
)

_TRAIN_MODULE_FILES: tuple[str, ...] = (
    "__future__.py",
    "_collections_abc.py",
    "_compat_pickle.py",
    "_markupbase.py",
    "_pydecimal.py",
    "_pyio.py",
    "_strptime.py",
    "_threading_local.py",
    "_weakrefset.py",
    "abc.py",
    "ast.py",
    "base64.py",
    "bdb.py",
    "bisect.py",
    "bz2.py",
    "calendar.py",
    "cmd.py",
    "code.py",
    "codecs.py",
    "codeop.py",
    "colorsys.py",
    "compileall.py",
    "configparser.py",
    "contextlib.py",
    "contextvars.py",
    "copy.py",
    "copyreg.py",
    "cProfile.py",
    "dataclasses.py",
    "dis.py",
    "doctest.py",
    "enum.py",
    "filecmp.py",
    "fileinput.py",
    "fnmatch.py",
    "ftplib.py",
    "functools.py",
    "genericpath.py",
    "getopt.py",
    "getpass.py",
    "gettext.py",
    "glob.py",
    "graphlib.py",
    "gzip.py",
    "hashlib.py",
    "heapq.py",
    "hmac.py",
    "imaplib.py",
    "inspect.py",
    "io.py",
    "keyword.py",
    "linecache.py",
    "locale.py",
    "lzma.py",
    "mailbox.py",
    "mimetypes.py",
    "modulefinder.py",
    "netrc.py",
    "ntpath.py",
    "numbers.py",
    "opcode.py",
    "operator.py",
    "optparse.py",
    "os.py",
    "pdb.py",
    "pickle.py",
    "pickletools.py",
    "pkgutil.py",
    "platform.py",
    "plistlib.py",
    "posixpath.py",
    "pprint.py",
    "profile.py",
    "pstats.py",
    "py_compile.py",
    "pyclbr.py",
    "pydoc.py",
    "queue.py",
    "quopri.py",
    "random.py",
    "reprlib.py",
    "rlcompleter.py",
    "runpy.py",
    "sched.py",
    "secrets.py",
    "selectors.py",
    "shelve.py",
    "shlex.py",
    "shutil.py",
    "signal.py",
    "site.py",
    "smtplib.py",
    "socket.py",
    "socketserver.py",
    "ssl.py",
    "stat.py",
    "statistics.py",
    "stringprep.py",
    "struct.py",
    "subprocess.py",
    "symtable.py",
    "tabnanny.py",
    "tarfile.py",
    "tempfile.py",
    "threading.py",
    "timeit.py",
    "token.py",
    "tokenize.py",
    "trace.py",
    "traceback.py",
    "types.py",
    "typing.py",
    "uuid.py",
    "warnings.py",
    "wave.py",
    "weakref.py",
    "webbrowser.py",
    "zipimport.py",
)

TRAIN_FILES: tuple[str, ...] = _TRAIN_PACKAGE_FILES + _TRAIN_MODULE_FILES

CALIBRATION_FILES: tuple[str, ...] = (
    "json/encoder.py",
    "json/decoder.py",
    "copy.py",
    "heapq.py",
    "bisect.py",
    "fnmatch.py",
    "glob.py",
    "shlex.py",
)


def stdlib_root() -> Path:
    """Directory of the running interpreter's standard library sources."""
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(split: Split) -> list[Path]:
    """Absolute paths of the files of ``split``, in list order.

    Raises ``FileNotFoundError`` naming the first listed file that is missing.
    """
    splits = {"train": TRAIN_FILES, "heldout": HELDOUT_FILES, "calibration": CALIBRATION_FILES}
    names = splits.get(split)
    if names is None:
        raise ValueError(f"unknown corpus split {split!r}; expected one of {sorted(splits)}")
    root = stdlib_root()
    paths = [root / name for name in names]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"corpus file for split {split!r} not found: {path}")
    return paths


def stdlib_text(split: Split) -> str:
    """The text of ``split``: its files in list order, joined by a blank line."""
    return "\n\n".join(path.read_text(encoding="utf-8") for path in stdlib_files(split))
