"""A 16-bit checkpoint brought to float32 without holding it twice.

Rule: a Hugging Face directory whose config says its weights are bfloat16 or float16,
stored as safetensors, is loaded in that dtype (transformers maps the files, reading
nothing yet) and each parameter and persistent buffer is then converted to float32 on
its own, after which the file pages it was read from are dropped from the process
(madvise MADV_DONTNEED on the part of the tensor inside a private mapping of a
*.safetensors file: the kernel re-reads such pages from the file if they are ever
touched again, so nothing is lost). Loading with dtype=float32 instead holds every
converted tensor and every touched file page until the end (1.1B model: peak 6.85 GB
against 4.84 GB). The conversion is exact, so the model equals a float32 load of
the same files, unless a buffer computed at initialisation (a non-persistent one,
such as rotary frequencies) came out in 16 bits: then `upcast_in_place` reports it
and the caller loads in float32 again.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import mmap
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from transformers import PretrainedConfig

SIXTEEN_BIT = {"bfloat16": torch.bfloat16, "float16": torch.float16}
_MADV_DONTNEED = 4


def stored_dtype(config: PretrainedConfig, model_dir: Path) -> torch.dtype | None:
    """The 16-bit dtype the directory's safetensors hold by its config, or None."""
    name = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = str(name).removeprefix("torch.") if name is not None else None
    if name not in SIXTEEN_BIT or not any(model_dir.glob("*.safetensors")):
        return None
    return SIXTEEN_BIT[name]


def upcast_in_place(model: nn.Module) -> bool:
    """Convert `model`'s floating parameters and persistent buffers to float32 one at a
    time, dropping the file pages each was read from; False (the model then is partly
    converted) when a non-persistent floating buffer is not float32."""
    for module in model.modules():
        for name in module._non_persistent_buffers_set:
            buffer = module._buffers.get(name)
            if buffer is not None and buffer.is_floating_point() \
                    and buffer.dtype != torch.float32:
                return False
    mapped = _safetensors_mappings()
    tensors = [*model.parameters(), *(buffer for buffer in model.buffers()
                                      if buffer.is_floating_point())]
    for tensor in tensors:
        if tensor.dtype == torch.float32:
            continue
        old = tensor.data
        start, size = old.data_ptr(), old.untyped_storage().nbytes()
        tensor.data = old.float()
        del old
        _drop_file_pages(start, size, mapped)
    return True


def _safetensors_mappings() -> list[tuple[int, int]]:
    """Address ranges of this process's private mappings of *.safetensors files (Linux),
    or []. transformers maps them read-write but never writes them: their pages are the
    file's."""
    ranges = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/maps").read_text().splitlines():
            fields = line.split()
            if len(fields) >= 6 and fields[5].endswith(".safetensors") \
                    and fields[1].endswith("p"):
                low, high = (int(bound, 16) for bound in fields[0].split("-"))
                ranges.append((low, high))
    return ranges


def _drop_file_pages(start: int, size: int, mapped: list[tuple[int, int]]) -> None:
    """madvise(MADV_DONTNEED) the whole pages of [start, start + size) when they lie in
    one private mapping of a safetensors file (re-read from the file if touched again)."""
    page = mmap.PAGESIZE
    low, high = -(-start // page) * page, (start + size) // page * page
    if high <= low or not any(a <= low and high <= b for a, b in mapped):
        return
    madvise = _madvise()
    if madvise is not None:
        madvise(ctypes.c_void_p(low), ctypes.c_size_t(high - low), _MADV_DONTNEED)


@functools.cache
def _madvise() -> Callable[..., int] | None:
    """The C library's madvise, loaded once, or None where there is none."""
    with contextlib.suppress(OSError, AttributeError):
        return ctypes.CDLL("libc.so.6", use_errno=True).madvise
    return None
