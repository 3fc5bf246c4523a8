"""Writing a run's state with any number of processes: a step's checkpoint and the final model.

Rank 0 writes the folder. Under FSDP2 and ZeRO-3 every process first takes part in gathering the
full weights, and where the optimizer state is sharded every process writes its own shard into
rank 0's temporary checkpoint folder before rank 0 completes and renames it.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hybridrft.models import load_training_policy, save_policy
from hybridrft.train import checkpoint as ckpt


def save_step_checkpoint(
    root: Path, step: int, *, engine, processes, model, policy, tokenizer, optimizer, scheduler,
    trainer_state: dict[str, Any], keep: int, sharded_optimizers: dict[str, Any] | None = None,
    config_yaml: str | None = None,
) -> Path:
    """``root/step-N``, atomic and verified (``checkpoint.save_checkpoint``), from every process.
    ``sharded_optimizers``: further optimizers (an interleaved method's fine-tuning optimizer) whose
    state the engine shards, each written by every process into the checkpoint's folder of that name."""
    model_state = engine.full_state_dict(model)  # a collective under FSDP2 / ZeRO-3
    folder = None
    if engine.shards_optimizer:
        made = str(ckpt.new_checkpoint_folder(root, step)) if processes.is_main else ""
        folder = Path(processes.gather(made)[0])
        engine.save_sharded_optimizer(model, optimizer, folder / "optimizer")
        for name, extra in (sharded_optimizers or {}).items():
            engine.save_sharded_optimizer(model, extra, folder / name)
            processes.wait()  # every shard written before rank 0 makes it durable
            for shard in sorted((folder / name).rglob("*")) if processes.is_main else []:
                ckpt.fsync_path(shard)
    final = root / f"step-{step:06d}"
    if processes.is_main:
        final = ckpt.save_checkpoint(
            root, step, model=policy, tokenizer=tokenizer, optimizer=None if folder else optimizer,
            scheduler=scheduler, trainer_state=trainer_state, keep=keep, model_state=model_state, folder=folder,
            config_yaml=config_yaml,
        )
    processes.wait()
    return final


def save_final_model(path: Path, *, engine, processes, model, policy, tokenizer, model_config) -> None:
    """The trained model as one ``save_pretrained`` folder (LoRA: merged, or the adapter alone), written
    into a temporary folder beside ``path``, every file fsynced, and renamed into place: an interrupted
    save leaves the previous ``path`` (if any) whole and never a half-written one under its name.
    Temporary folders that an earlier, killed save left beside ``path`` are removed first."""
    model_state = engine.full_state_dict(model)  # a collective under FSDP2 / ZeRO-3
    if processes.is_main:
        path.parent.mkdir(parents=True, exist_ok=True)
        for stale in path.parent.glob(f".{path.name}-*"):  # only this function makes such names
            shutil.rmtree(stale, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}-", dir=path.parent))
        aside = None  # the previous final model while the new one is renamed into place
        try:
            _write_final_model(tmp, engine=engine, policy=policy, tokenizer=tokenizer, model_config=model_config,
                               model_state=model_state)
            for file in sorted(tmp.rglob("*")):
                ckpt.fsync_path(file)
            ckpt.fsync_path(tmp)
            if path.exists():  # moved aside, not deleted, until the new one is in place
                aside = Path(tempfile.mkdtemp(prefix=f".{path.name}-old-", dir=path.parent))
                os.replace(path, aside / path.name)
            os.replace(tmp, path)
            ckpt.fsync_path(path.parent)
        except BaseException:
            if aside is not None and (aside / path.name).exists() and not path.exists():
                os.replace(aside / path.name, path)  # the new one never got in: the previous one goes back
            for folder in (tmp, aside):
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
            raise
        if aside is not None:
            shutil.rmtree(aside, ignore_errors=True)
    processes.wait()


def _write_final_model(folder: Path, *, engine, policy, tokenizer, model_config, model_state) -> None:
    merge = model_config.lora.save == "merged"
    if model_state is not None and model_config.lora.rank:
        # sharded LoRA: rebuild base + adapters on CPU from the gathered weights, then save as usual
        whole = load_training_policy(model_config)
        missing, unexpected = whole.load_state_dict(model_state, strict=False)
        if unexpected or any(name not in engine.tied_names for name in missing):
            raise RuntimeError(f"gathered weights do not fit the model: missing {missing}, unexpected {unexpected}")
        save_policy(whole, tokenizer, folder, merge=merge)
    elif model_state is not None:
        policy.save_pretrained(folder, state_dict=model_state, safe_serialization=True)
        tokenizer.save_pretrained(folder)
    else:
        save_policy(policy, tokenizer, folder, merge=merge)
