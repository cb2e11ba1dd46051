"""Checkpoints: a plain HF model folder plus trainer state beside it, written atomically.

Layout of a checkpoint folder:
  model/              HF folder (full weights) or peft adapter folder (LoRA)
  trainer_state.pt    optimizer, scheduler, RNG states, extras; step, data position, curriculum and the
                      last step's metrics as JSON text. Tensors and plain data only: it is loaded with
                      `weights_only=True`, so a tampered file cannot run code on resume.
A checkpoint is written to a temporary sibling folder and renamed into place, so a kill at any
moment leaves either the previous checkpoint or the new one, never a half-written folder. A resume
reads the whole checkpoint before applying any of it; a damaged one is named in one line.
"""

from __future__ import annotations

import json
import logging
import pickle
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from reasonloop.atomic import replace_folder
from reasonloop.errors import UserError

log = logging.getLogger(__name__)

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    """RNG states as tensors and plain values only, so the file loads with `weights_only=True`."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    python = state["python"]
    random.setstate((python[0], tuple(python[1]), python[2]))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_weights(model, folder: Path, tokenizer, weights: dict | None) -> None:
    """`weights`: an FSDP model's whole weights (parallel.full_state_dict), else None (the model's own)."""
    from reasonloop.models import unwrap

    target = model.module if hasattr(model, "module") and not hasattr(model, "config") else model
    if hasattr(target, "peft_config"):
        target.save_pretrained(folder)  # adapter only; the base model is the stage's input
    else:
        unwrap(target).save_pretrained(folder, safe_serialization=True, state_dict=weights)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def _json_value(value):
    """numpy scalars in a curriculum state become plain numbers."""
    return value.item() if hasattr(value, "item") else str(value)


def save_checkpoint(folder: str | Path, model, tokenizer, optimizer, scheduler, state: dict,
                    extra_modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write model + trainer state to `folder` atomically (temp folder, then rename). `state` (step, data
    position, curriculum, last metrics) is stored as JSON text: the file holds tensors and plain data only.

    Under torchrun every rank calls it: an FSDP model's weights and optimizer state are gathered from all
    ranks, whole, into the same files a single process writes; rank 0 alone writes them.
    """
    from reasonloop import dist, parallel

    folder = Path(folder)
    weights = parallel.full_state_dict(model)
    opt_state = parallel.optimizer_state(optimizer) if optimizer is not None else None
    if not dist.is_main():
        return folder
    with replace_folder(folder, what="the checkpoint", kept="the previous checkpoint is kept") as tmp:
        _save_weights(model, tmp / "model", tokenizer, weights)
        torch.save({"optimizer": opt_state,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng_state(), "state_json": json.dumps(state, default=_json_value),
                    "modules": {k: m.state_dict() for k, m in (extra_modules or {}).items()}},
                   tmp / STATE_FILE)
    return folder


@dataclass
class Checkpoint:
    """A checkpoint read in full (and so known to be whole) before any of it is applied."""

    path: Path
    weights: dict[str, torch.Tensor]  # model/*.safetensors: full weights, or the LoRA adapter
    optimizer: dict | None
    scheduler: dict | None
    rng: dict
    state: dict  # step, data position, curriculum, last metrics
    modules: dict  # state dicts of extra modules (PPO value head)


class _Damaged(Exception):
    pass


def _read(folder: Path) -> Checkpoint:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        # weights_only: unpickling anything but tensors and plain data could run code a tampered file holds
        trainer = torch.load(folder / STATE_FILE, weights_only=True)
    except pickle.UnpicklingError as err:
        if "weights only" in str(err).lower():
            raise _Damaged(f"{STATE_FILE} holds objects other than tensors and plain data (a tampered file, "
                           "or one written before reasonloop's weights-only checkpoints); refused to load it")
        raise _Damaged(f"{STATE_FILE} is unreadable ({str(err).splitlines()[0]})") from None
    except (OSError, RuntimeError, EOFError, ValueError) as err:
        raise _Damaged(f"{STATE_FILE} is unreadable ({str(err).splitlines()[0][:160]})") from None
    if not isinstance(trainer, dict) or not isinstance(trainer.get("state_json"), str):
        raise _Damaged(f"{STATE_FILE} is not a reasonloop trainer state")
    weights: dict[str, torch.Tensor] = {}
    for f in sorted((folder / "model").glob("*.safetensors")):
        try:
            weights.update(load_file(str(f)))
        except (SafetensorError, OSError) as err:
            raise _Damaged(f"model/{f.name} is unreadable ({str(err).splitlines()[0]})") from None
    if not weights:
        raise _Damaged("model/ holds no weights")
    try:
        state = json.loads(trainer["state_json"])
    except ValueError as err:
        raise _Damaged(f"{STATE_FILE}: trainer state is not JSON ({err})") from None
    return Checkpoint(folder, weights, trainer.get("optimizer"), trainer.get("scheduler"), trainer["rng"],
                      state, trainer.get("modules") or {})


def read_checkpoint(folder: str | Path) -> Checkpoint | None:
    """The checkpoint to resume from, or None when there is none.

    `folder` is tried first, then `<folder>.old` (what a kill between the two renames of
    `save_checkpoint` leaves). A damaged one falls back to the other; if none is readable, a
    UserError says which files are damaged and what to delete.
    """
    folder = Path(folder)
    damaged = []
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if not candidate.exists():
            continue
        try:
            return _read(candidate)
        except _Damaged as err:
            log.warning("checkpoint %s is damaged: %s", candidate, err)
            damaged.append((candidate, str(err)))
    if not damaged:
        return None
    where, why = damaged[0]
    delete = " and ".join(str(c) for c, _ in damaged)
    raise UserError(f"{where}: damaged checkpoint: {why}; delete {delete} to restart this stage from its "
                    "first step")


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint folder a resume would read (its files present; not checked for damage)."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / STATE_FILE).is_file() and (candidate / "model").is_dir():
            return candidate
    return None


def resume_training(ckpt_dir: str | Path | None, model, optimizer, scheduler, *, store=None, stage: str = "",
                    modules: dict[str, torch.nn.Module] | None = None) -> dict | None:
    """Resume a training loop from the checkpoint in `ckpt_dir`, if there is one: weights, optimizer,
    scheduler, extra `modules` (PPO's value head) and RNG states are restored, and the saved state (step,
    data position, curriculum, last metrics) is returned; None without a checkpoint.

    Rows the run store holds for `stage` after the checkpoint's step (all of them, without one) are
    dropped: a killed run logged them after its last checkpoint, and the resumed run logs them again.
    """
    from reasonloop import dist, parallel

    found = read_checkpoint(ckpt_dir) if ckpt_dir is not None else None
    state = None
    if found is not None:
        load_weights_into(model, found)
        parallel.load_optimizer_state(optimizer, found.optimizer)
        scheduler.load_state_dict(found.scheduler)
        for name, module in (modules or {}).items():
            module.load_state_dict(found.modules[name])
        set_rng_state(found.rng)
        state = dict(found.state)
        log.info("%s: resumed from %s at step %d", stage, found.path, state["step"])
    if store is not None and dist.is_main():
        store.truncate_after(stage, state["step"] if state is not None else 0)
    return state


def load_weights_into(model, checkpoint: Checkpoint) -> None:
    """Copy a checkpoint's weights into an already built model (full, FSDP-sharded or LoRA)."""
    from reasonloop import parallel
    from reasonloop.models import unwrap

    target = model.module if hasattr(model, "module") and not hasattr(model, "config") else model
    if hasattr(target, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(target, checkpoint.weights)
        return
    if parallel.is_sharded(target):  # every rank read the whole checkpoint; each keeps its shard
        missing, unexpected = parallel.load_full_state_dict(target, checkpoint.weights)
    else:
        missing, unexpected = unwrap(target).load_state_dict(checkpoint.weights, strict=False)
    # Tied embeddings are saved once; anything else missing means the checkpoint is not this model.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise UserError(f"{checkpoint.path}: checkpoint does not match the model (missing {missing[:3]}, "
                        f"unexpected {unexpected[:3]}); delete it to restart this stage from its first step")


def save_model_folder(model, tokenizer, out: str | Path) -> Path:
    """A training stage's output model as a plain HF folder. Under torchrun every rank calls it (an FSDP model
    is gathered whole from all ranks); rank 0 writes, and every rank returns once the folder is there."""
    from reasonloop import dist, parallel
    from reasonloop.models import save_hf_folder

    weights = parallel.full_state_dict(model)
    if dist.is_main():
        save_hf_folder(model, tokenizer, out, state_dict=weights)
    dist.barrier()
    return Path(out)
