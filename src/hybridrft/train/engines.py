"""The distributed engine under the trainer, as accelerate runs it: one process, DDP, or FSDP2.

The trainer asks the same things of each: prepare the policy scorer and the optimizer, accumulate
gradients over micro-batches and synchronise them once per update, give the global gradient norm,
hand the sampler whole parameters, and gather a full model (and the optimizer's state, sharded
under FSDP2) for a checkpoint. What differs between engines is answered here, and only here.

Processes on a machine without GPUs run on CPU and talk over gloo. accelerate turns FSDP on only
for GPU back-ends, so an FSDP launch on CPU (``recipes/accelerate/fsdp2_cpu.yaml``, which the
tests use) is switched to FSDP here, with the plugin accelerate read from the launch settings.
"""

from __future__ import annotations

import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch


def build_accelerator(*, log_with, project_dir: str):
    """The run's ``Accelerator``: on CPU when several processes run without GPUs; FSDP when launched for it."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    accelerator = Accelerator(cpu=cpu_processes, log_with=log_with, project_dir=project_dir)
    fsdp_launch = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_launch and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()  # FSDP_* settings
        PartialState().distributed_type = DistributedType.FSDP  # the accelerator state copies the partial state's
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def is_fsdp2(accelerator) -> bool:
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return accelerator.distributed_type == DistributedType.FSDP and plugin is not None and plugin.fsdp_version == 2


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP2 sharded (each gathers its parameters on forward)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


class Engine:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.fsdp2 = is_fsdp2(accelerator)
        self.shards_optimizer = self.fsdp2

    def accumulating(self, model, last: bool):
        """Gradients of every micro-batch but the update's last stay local (one all-reduce per update)."""
        return nullcontext() if last else self.accelerator.no_sync(model)

    def clip_gradients(self, model, max_norm: float | None) -> float:
        """The global pre-clip gradient norm, after clipping to ``max_norm``. Under DDP every process
        holds the all-reduced gradient; under FSDP2 each holds a shard and the norm is reduced (a
        replicated DTensor, made a float here)."""
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = self.accelerator.clip_grad_norm_(params, max_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    @contextmanager
    def whole_parameters(self, model):
        """The policy with whole parameters for sampling. Under FSDP2 every unit is gathered once and
        kept so (no collective per decode step, and processes may decode different lengths), then
        resharded."""
        if not self.fsdp2:
            yield
            return
        units = fsdp_units(model)
        # FSDP2 sets up its units from the root the first time the root runs; sampling may come first
        model._get_fsdp_state()._lazy_init()
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(True, recurse=False)

    def full_state_dict(self, model, prefix: str = "policy.") -> dict[str, torch.Tensor] | None:
        """The full model's weights on rank 0 (None elsewhere; under FSDP2 every process must call
        this, since it gathers), with ``prefix`` (the scorer's attribute) removed; None when the
        unwrapped model's own state is whole (one process, DDP)."""
        if not self.fsdp2:
            return None
        state = self.accelerator.get_state_dict(model)
        if not self.accelerator.is_main_process:
            return None
        # a tied weight (input and output embeddings) is saved once, under its first name, as
        # save_pretrained does; gathered copies no longer share storage for it to notice
        seen: set[int] = set()
        repeated: set[str] = set()
        for name, param in self.accelerator.unwrap_model(model).named_parameters(remove_duplicate=False):
            if id(param) in seen:
                repeated.add(name)
            seen.add(id(param))
        return {name.removeprefix(prefix): tensor for name, tensor in state.items() if name not in repeated}

    def save_sharded_optimizer(self, model, optimizer, folder: Path) -> None:
        """Each process writes its shard of the optimizer state into ``folder`` (torch.distributed.checkpoint)."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(folder))

    def load_sharded_optimizer(self, model, optimizer, folder: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)
        _create_optimizer_state(optimizer)  # the shards are read into the state's tensors
        state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


def _create_optimizer_state(optimizer) -> None:
    """Give a fresh optimizer its state tensors: one step at learning rate 0 on zero gradients.

    torch.distributed.checkpoint does this itself only when no parameter has a gradient, and the
    trainer allocates every gradient up front; without it, loading would leave the state empty."""
    if optimizer.state:
        return
    rates = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for param in group["params"]:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
    optimizer.step()
    for group, rate in zip(optimizer.param_groups, rates):
        group["lr"] = rate
    optimizer.zero_grad(set_to_none=False)
