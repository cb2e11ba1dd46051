"""Checkpoints: a plain HF model folder plus trainer state beside it, written atomically.

Layout of a checkpoint folder:
  model/              HF folder (full weights) or peft adapter folder (LoRA)
  trainer_state.pt    optimizer, scheduler, RNG states, step, data position, curriculum, extras
A checkpoint is written to a temporary sibling folder and renamed into place, so a kill at any
moment leaves either the previous checkpoint or the new one, never a half-written folder.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

STATE_FILE = "trainer_state.pt"


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _save_weights(model, folder: Path, tokenizer) -> None:
    from reasonloop.packing import unwrap

    target = model.module if hasattr(model, "module") and not hasattr(model, "config") else model
    if hasattr(target, "peft_config"):
        target.save_pretrained(folder)  # adapter only; the base model is the stage's input
    else:
        unwrap(target).save_pretrained(folder, safe_serialization=True)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)


def save_checkpoint(folder: str | Path, model, tokenizer, optimizer, scheduler, state: dict,
                    extra_modules: dict[str, torch.nn.Module] | None = None) -> Path:
    """Write model + trainer state to `folder` atomically (temp folder, then rename)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _save_weights(model, tmp / "model", tokenizer)
        torch.save({"optimizer": optimizer.state_dict() if optimizer is not None else None,
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "rng": rng_state(), "state": state,
                    "modules": {k: m.state_dict() for k, m in (extra_modules or {}).items()}},
                   tmp / STATE_FILE)
        old = folder.with_name(folder.name + ".old")
        if folder.exists():
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
        tmp.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def find_checkpoint(folder: str | Path) -> Path | None:
    """The checkpoint to resume from; a `.old` one survives a kill between the two renames."""
    folder = Path(folder)
    for candidate in (folder, folder.with_name(folder.name + ".old")):
        if (candidate / STATE_FILE).is_file() and (candidate / "model").is_dir():
            return candidate
    return None


def load_trainer_state(folder: Path) -> dict:
    return torch.load(folder / STATE_FILE, weights_only=False)


def load_weights_into(model, folder: Path) -> None:
    """Copy a checkpoint's weights into an already built model (full or LoRA)."""
    from safetensors.torch import load_file

    from reasonloop.packing import unwrap

    target = model.module if hasattr(model, "module") and not hasattr(model, "config") else model
    if hasattr(target, "peft_config"):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(target, load_file(str(folder / "model" / "adapter_model.safetensors")))
        return
    weights = {}
    for f in sorted((folder / "model").glob("*.safetensors")):
        weights.update(load_file(str(f)))
    missing, unexpected = unwrap(target).load_state_dict(weights, strict=False)
    # Tied embeddings are saved once; anything else missing means the checkpoint is not this model.
    missing = [k for k in missing if "lm_head" not in k]
    if missing or unexpected:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing[:3]}, "
                           f"unexpected {unexpected[:3]}")
