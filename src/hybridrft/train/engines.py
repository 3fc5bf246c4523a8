"""The distributed engine under the trainer, as accelerate runs it: one process, DDP, FSDP2, or
DeepSpeed ZeRO-2/3 (the ``deepspeed`` extra).

The trainer asks the same things of each: prepare the policy scorer and the optimizer, accumulate
gradients over micro-batches and synchronise them once per update, give the global gradient norm,
hand the sampler whole parameters, and gather a full model (and the optimizer's state, sharded
under FSDP2) for a checkpoint. What differs between engines is answered here, and only here.

Processes on a machine without GPUs run on CPU and talk over gloo. accelerate turns FSDP on only
for GPU back-ends, so an FSDP launch on CPU (``recipes/accelerate/fsdp2_cpu.yaml``, which the
tests use) is switched to FSDP here, with the plugin accelerate read from the launch settings.

Under DeepSpeed the optimizer step runs inside ``accelerator.backward`` of an update's last
micro-batch, clipped by DeepSpeed's ``gradient_clipping`` (set here from ``train.max_grad_norm``):
an update with a non-finite loss or gradient is applied before the trainer sees it, so it cannot be
withheld (``Engine.can_skip_updates``). On CPU (``recipes/accelerate/zero{2,3}_cpu.yaml``, which
``tests/test_deepspeed.py`` uses) DeepSpeed runs with ``DS_ACCELERATOR=cpu`` over gloo.
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

logger = logging.getLogger(__name__)


def build_accelerator(*, log_with, project_dir: str, max_grad_norm: float | None = None):
    """The run's ``Accelerator``: on CPU when several processes run without GPUs; FSDP or DeepSpeed
    when launched for it."""
    from accelerate import Accelerator, FullyShardedDataParallelPlugin
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType

    cpu_processes = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.cuda.is_available()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return _deepspeed_accelerator(log_with=log_with, project_dir=project_dir, max_grad_norm=max_grad_norm)
    accelerator = Accelerator(cpu=cpu_processes, log_with=log_with, project_dir=project_dir)
    fsdp_launch = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if fsdp_launch and accelerator.distributed_type == DistributedType.MULTI_CPU:
        plugin = getattr(accelerator.state, "fsdp_plugin", None) or FullyShardedDataParallelPlugin()  # FSDP_* settings
        PartialState().distributed_type = DistributedType.FSDP  # the accelerator state copies the partial state's
        accelerator.state.distributed_type = DistributedType.FSDP
        accelerator.state.fsdp_plugin = plugin
    return accelerator


def _deepspeed_accelerator(*, log_with, project_dir: str, max_grad_norm: float | None):
    """An ``Accelerator`` launched with a DeepSpeed config. Without GPUs DeepSpeed runs on CPU over
    gloo (without an explicit gloo process group accelerate sees one process on every rank). No
    DataLoader is prepared, so the micro-batch size DeepSpeed insists on is set by hand (the trainer
    splits batches itself: it only enters DeepSpeed's bookkeeping); clipping is DeepSpeed's, so it
    takes the run's ``train.max_grad_norm`` (0 turns it off)."""
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    handlers = []
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(log_with=log_with, project_dir=project_dir, kwargs_handlers=handlers)
    config = accelerator.state.deepspeed_plugin.deepspeed_config
    config["train_micro_batch_size_per_gpu"] = 1
    config["gradient_clipping"] = float(max_grad_norm or 0.0)
    return accelerator


def is_fsdp2(accelerator) -> bool:
    from accelerate.utils import DistributedType

    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    return accelerator.distributed_type == DistributedType.FSDP and plugin is not None and plugin.fsdp_version == 2


def fsdp_units(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The modules FSDP2 sharded (each gathers its parameters on forward)."""
    from torch.distributed.fsdp import FSDPModule

    return [m for m in model.modules() if isinstance(m, FSDPModule)]


def zero_stage(accelerator) -> int:
    """DeepSpeed's ZeRO stage, 0 when the run is not under DeepSpeed."""
    from accelerate.utils import DistributedType

    if accelerator.distributed_type != DistributedType.DEEPSPEED:
        return 0
    return int(accelerator.state.deepspeed_plugin.zero_stage)


class Engine:
    def __init__(self, accelerator):
        self.accelerator = accelerator
        self.fsdp2 = is_fsdp2(accelerator)
        self.zero_stage = zero_stage(accelerator)
        self.deepspeed = self.zero_stage > 0
        self.zero3 = self.zero_stage == 3
        self.shards_optimizer = self.fsdp2 or self.deepspeed
        # DeepSpeed steps inside the backward of an update's last micro-batch, before any check
        self.can_skip_updates = not self.deepspeed
        # DeepSpeed keeps gradients in its own buffers (a ZeRO-3 parameter is empty between forwards)
        self.preallocates_gradients = not self.deepspeed

    def prepare(self, scorer: torch.nn.Module, optimizer):
        """The scorer and optimizer wrapped for the engine; every gradient buffer allocated once,
        together, before any activation (zeroed in place after each update, never freed: buffers
        reallocated among the backward's temporaries fragment the heap)."""
        model, optimizer = self.accelerator.prepare(scorer, optimizer)
        if self.preallocates_gradients:
            for param in model.parameters():
                if param.requires_grad:
                    param.grad = torch.zeros_like(param)
        return model, optimizer

    def prepare_frozen(self, scorer: torch.nn.Module, name: str) -> torch.nn.Module:
        """A frozen model's scorer (the reference model, a teacher) on the run's device. Under FSDP2 it is
        sharded as the policy is: each decoder layer (the model's ``_no_split_modules``) its own unit,
        gathered for its forward and freed after it, so a process holds 1/N of the layers between
        forwards. The rest (embeddings, final norm, output head: the root's own parameters) stays whole
        on every process: GKD's JSD reads the teacher's head outside the teacher's forward, inside the
        policy's checkpointed chunks, which a sharded root would have freed by the backward."""
        if not self.fsdp2:
            return scorer.to(self.accelerator.device)
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        plugin = self.accelerator.state.fsdp_plugin
        layer_classes = set(getattr(scorer, "_no_split_modules", None) or ())
        layers = [m for m in scorer.modules() if type(m).__name__ in layer_classes]
        if not layers:
            logger.warning("%s (%s) names no decoder-layer class (_no_split_modules): it stays whole on every process",
                           name, type(scorer.config).__name__)
            return scorer.to(self.accelerator.device)
        mesh = getattr(self.accelerator, "torch_device_mesh", None)
        settings = {
            "offload_policy": plugin.cpu_offload,
            "mp_policy": plugin.mixed_precision_policy or MixedPrecisionPolicy(),  # computes as the policy does
            "mesh": mesh[tuple(self.accelerator.parallelism_config.fsdp_dim_names)] if mesh is not None else None,
        }
        for layer in layers:
            fully_shard(layer, reshard_after_forward=True, **settings)
        in_layers = {id(p) for layer in layers for p in layer.parameters()}
        whole = {p for p in scorer.parameters() if id(p) not in in_layers}
        for param in whole:  # fully_shard places what it shards; what it ignores is placed here
            param.data = param.data.to(self.accelerator.device)
        fully_shard(scorer, ignored_params=whole, **settings)
        # the scorer is FSDP's root before any layer runs (the JSD calls the teacher's layers directly,
        # and a unit that runs first would make itself the root and keep its parameters whole)
        scorer._get_fsdp_state()._lazy_init()
        held = sum(p.to_local().numel() if hasattr(p, "to_local") else p.numel() for p in scorer.parameters())
        logger.info("%s sharded (FSDP2, %d layers): this process holds %d of its %d parameters",
                    name, len(layers), held, sum(p.numel() for p in scorer.parameters()))
        return scorer

    def step(self, optimizer, *, take: bool) -> None:
        """The optimizer step when ``take`` (a non-finite update is not taken), then gradients zeroed
        in place (freed buffers reallocated every step fragment the heap: about 60 MB more peak
        memory for SmolLM2 on CPU)."""
        if take:
            optimizer.step()
        elif not self.can_skip_updates:
            logger.warning(
                "non-finite loss or gradient norm: DeepSpeed has already applied this update; the step is "
                "counted as skipped and the run stops after train.max_bad_steps such steps"
            )
        optimizer.zero_grad(set_to_none=False)

    def accumulating(self, model, last: bool):
        """Gradients of every micro-batch but the update's last stay local (one all-reduce per update).
        Under DeepSpeed ``no_sync`` does nothing and ``accelerator.backward`` steps whenever gradients
        are synchronised, so the update's last micro-batch is marked as its boundary instead."""
        if self.deepspeed:
            self.accelerator.gradient_state._set_sync_gradients(last)
            return nullcontext()
        return nullcontext() if last else self.accelerator.no_sync(model)

    def clip_gradients(self, model, max_norm: float | None) -> float:
        """The global pre-clip gradient norm, after clipping to ``max_norm``. Under DDP every process
        holds the all-reduced gradient; under FSDP2 each holds a shard and the norm is reduced (a
        replicated DTensor, made a float here). DeepSpeed has clipped (``gradient_clipping``) and
        stepped already; the norm is the one it computed (``p.grad`` is None under ZeRO)."""
        if self.deepspeed:
            norm = self.accelerator.clip_grad_norm_(model.parameters(), max_norm or float("inf"))
            return float("nan") if norm is None else float(norm)
        params = [p for p in model.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = self.accelerator.clip_grad_norm_(params, max_norm or float("inf"))
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    @contextmanager
    def whole_parameters(self, model):
        """The policy with whole parameters for sampling. Under FSDP2 every unit is gathered once and
        kept so (no collective per decode step, and processes may decode different lengths), then
        resharded. Under ZeRO-3 all parameters are gathered and DeepSpeed's hooks taken off the
        module for the same reason (its ``unwrap_model_for_generation``), then put back."""
        if self.zero3:
            from deepspeed.runtime.zero.stage3 import unwrap_model_for_generation

            with unwrap_model_for_generation(model):
                yield
            return
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
        unwrapped model's own state is whole (one process, DDP, ZeRO-2). ZeRO-3 gathers it with
        ``zero3_save_16bit_model: true`` in the accelerate config (full precision under ``mixed_precision: no``)."""
        if not (self.fsdp2 or self.zero3):
            return None
        state = self.accelerator.get_state_dict(model)
        if not self.accelerator.is_main_process:
            return None
        # a tied weight (input and output embeddings) is saved once, under its first name, as
        # save_pretrained does; gathered copies no longer share storage for it to notice
        seen: set[int] = set()
        self.tied_names = set()
        for name, param in self.accelerator.unwrap_model(model).named_parameters(remove_duplicate=False):
            if id(param) in seen:
                self.tied_names.add(name.removeprefix(prefix))
            seen.add(id(param))
        return {
            name.removeprefix(prefix): tensor for name, tensor in state.items() if name.removeprefix(prefix) not in self.tied_names
        }

    @contextmanager
    def plain_model_loading(self):
        """Models loaded inside are whole, ordinary modules (a frozen reference model). Once a ZeRO-3
        accelerator exists transformers' ``from_pretrained`` would build a partitioned one."""
        if not self.zero3:
            yield
            return
        from transformers.integrations import unset_hf_deepspeed_config

        unset_hf_deepspeed_config()
        try:
            yield
        finally:
            self.accelerator.state.deepspeed_plugin.set_deepspeed_weakref()

    def finish(self) -> None:
        """The end of training: DeepSpeed's engine is destroyed (hooks off, memory freed); a ZeRO-3
        process on CPU otherwise aborts at exit. The prepared model cannot train after this."""
        if self.deepspeed:
            self.accelerator.free_memory()

    def save_sharded_optimizer(self, model, optimizer, folder: Path) -> None:
        """Each process writes its shard of the optimizer state into ``folder`` (torch.distributed.checkpoint).
        Under DeepSpeed the engine writes its own checkpoint there (ZeRO's optimizer partitions, one
        file per process). Rank 0 then fsyncs every file with the rest of the checkpoint."""
        if self.deepspeed:
            model.save_checkpoint(str(folder), tag=DEEPSPEED_TAG)
            self.accelerator.wait_for_everyone()  # every shard written before rank 0 completes the checkpoint
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)  # the torch optimizer inside accelerate's wrapper
        dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(folder))

    def load_sharded_optimizer(self, model, optimizer, folder: Path) -> None:
        """Each process reads its shard back (DeepSpeed: the engine's checkpoint, whose module weights
        are the ones ``model/`` already gave)."""
        if self.deepspeed:
            model.load_checkpoint(str(folder), tag=DEEPSPEED_TAG, load_lr_scheduler_states=False)
            return
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict

        optimizer = getattr(optimizer, "optimizer", optimizer)
        _create_optimizer_state(optimizer)  # the shards are read into the state's tensors
        state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
        dcp.load(state, checkpoint_id=str(folder))
        set_optimizer_state_dict(model, optimizer, state["optimizer"])


DEEPSPEED_TAG = "deepspeed"  # the engine's checkpoint: optimizer/deepspeed/ in a hybridrft checkpoint


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
