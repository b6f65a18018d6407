"""How the processes of ``afmc train`` share the student (``training.engine``).

Rules:
- One process: the student itself.
- ``ddp``: the student replicated, wrapped in DistributedDataParallel (gradients averaged
  in the backward of the last micro-batch).
- ``fsdp`` (FSDP2, ``torch.distributed.fsdp.fully_shard``; at least 2 processes): every
  decoder block (the classes of the model's ``_no_split_modules``) and then the rest is
  sharded by rows (dim 0) over the processes; weights, gradients and AdamW state exist
  once over all processes. The input ranges are left out (``ignored_params``): every
  process holds them whole, and their gradients are averaged here after the last
  micro-batch, as DDP averages them. A weight row lies whole on one process, so the
  per-row clipping of the analog weights runs on each process's local rows
  (``analog_layer.clip_weights``). Gradient-norm clipping adds the squared norms of the
  local shards over the processes, plus the ranges' (the same on every process).
  Checkpoints and the result are written by process 0 from an unsharded copy of the
  student (made before sharding) into which the gathered full state is loaded; the
  optimizer state is saved and restored as the full state dict (keyed by parameter
  name, so a checkpoint does not depend on the number of processes' shards). The
  teacher stays whole on every process (it has no gradients or optimizer state).
"""

from __future__ import annotations

import contextlib
import copy

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from afmc.train.analog_layer import analog_layers


class Engine:
    """One process, the student itself (the base of the distributed engines)."""

    def __init__(self, student: nn.Module) -> None:
        self.student = student
        self.module: nn.Module = student  # what the forward runs

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        """The context of one micro-batch's forward and backward (`last`: the step's last)."""
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        """After the step's last backward: gradients the wrapper does not reduce."""

    def clip_grad_norm(self, parameters: list[nn.Parameter], max_norm: float) -> None:
        torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def host(self) -> nn.Module:
        """Process 0's unsharded student with every tensor's current value (collective)."""
        return self.student

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        """The optimizer state a checkpoint holds (collective)."""
        return optimizer.state_dict()

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        optimizer.load_state_dict(state)


class DataParallelEngine(Engine):
    """``ddp``: DistributedDataParallel."""

    def __init__(self, student: nn.Module) -> None:
        super().__init__(student)
        self.module = DistributedDataParallel(student)

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last else self.module.no_sync()


class ShardedEngine(Engine):
    """``fsdp``: FSDP2 (module rules)."""

    def __init__(self, student: nn.Module, world: int) -> None:
        from torch.distributed.fsdp import fully_shard

        super().__init__(student)
        self.world = world
        self.copy = _host_copy(student) if dist.get_rank() == 0 else None
        self.ranges = [layer.input_range for _, layer in analog_layers(student)]
        ignored = set(self.ranges)
        blocks = set(getattr(student, "_no_split_modules", None) or ())
        for module in list(student.modules())[1:]:
            if type(module).__name__ in blocks:
                fully_shard(module, ignored_params=ignored)
        fully_shard(student, ignored_params=ignored)

    def sync(self, last: bool) -> contextlib.AbstractContextManager:
        self.student.set_requires_gradient_sync(last)
        return contextlib.nullcontext()

    def after_backward(self) -> None:
        grads = [r.grad for r in self.ranges if r.grad is not None]
        if grads:
            flat = torch.cat([g.reshape(-1) for g in grads])
            dist.all_reduce(flat)
            flat /= self.world
            offset = 0
            for grad in grads:
                grad.copy_(flat[offset:offset + grad.numel()].view_as(grad))
                offset += grad.numel()

    def clip_grad_norm(self, parameters: list[nn.Parameter], max_norm: float) -> None:
        """torch's clip_grad_norm_ (coefficient max_norm / (norm + 1e-6), at most 1) over
        sharded and replicated gradients (module rules)."""
        grads = [p.grad for p in parameters if p.grad is not None]
        sharded = torch.zeros((), dtype=torch.float32)
        replicated = torch.zeros((), dtype=torch.float32)
        for grad in grads:
            if _is_dtensor(grad):
                sharded += grad.to_local().float().square().sum()
            else:
                replicated += grad.float().square().sum()
        dist.all_reduce(sharded)
        norm = torch.sqrt(sharded + replicated)
        coefficient = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for grad in grads:
            (grad.to_local() if _is_dtensor(grad) else grad).mul_(coefficient)

    def host(self) -> nn.Module:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_model_state_dict,
        )

        full = get_model_state_dict(self.student, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))
        if self.copy is not None:
            self.copy.load_state_dict(full)
        return self.copy if self.copy is not None else self.student

    def optimizer_state(self, optimizer: torch.optim.Optimizer) -> dict:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            get_optimizer_state_dict,
        )

        return get_optimizer_state_dict(self.student, optimizer, options=StateDictOptions(
            full_state_dict=True, cpu_offload=True))

    def load_optimizer_state(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_optimizer_state_dict,
        )

        set_optimizer_state_dict(self.student, optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))


def check_engine(engine: str, world: int) -> None:
    """training.engine fsdp needs at least 2 processes (checked before anything is written)."""
    if engine == "fsdp" and world < 2:
        raise ValueError("training.engine=fsdp shards the student over processes: run it "
                         "under torchrun with at least 2 (torchrun --nproc-per-node N)")


def make_engine(student: nn.Module, engine: str, world: int) -> Engine:
    """The engine of `training.engine` for `world` processes (module rules)."""
    check_engine(engine, world)
    if engine == "fsdp":
        return ShardedEngine(student, world)
    return DataParallelEngine(student) if world > 1 else Engine(student)


def _host_copy(student: nn.Module) -> nn.Module:
    """An unsharded copy of `student` in host memory (the student moved there for the
    copy and back, so no second student is ever allocated on the device)."""
    device = next(student.parameters()).device
    host = copy.deepcopy(student.to("cpu"))
    student.to(device)
    return host


def _is_dtensor(tensor: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(tensor, DTensor)

