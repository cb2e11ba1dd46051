"""Rollout engines behind one small interface (``Engine`` in ``base``): torch (built-in) and vLLM.

``make_engine(model, tokenizer)`` picks vLLM when it is installed and a GPU is present, else the
torch engine, which runs on the live model object so RL can train it and sample from it in turn.
"""

from __future__ import annotations

import importlib.util

import torch

from reasonloop.errors import UserError
from reasonloop.memory import track
from reasonloop.generate.base import Engine, FinishReason, Sample, SamplingParams

__all__ = ["Engine", "FinishReason", "Sample", "SamplingParams", "make_engine", "vllm_available"]

KINDS = ("auto", "torch", "vllm")


def vllm_available() -> bool:
    """vLLM importable and a CUDA device present."""
    return importlib.util.find_spec("vllm") is not None and torch.cuda.is_available()


def make_engine(model, tokenizer, kind: str = "auto", max_batch: int = 64,
                dtype: torch.dtype | str | None = None, progress: bool = True) -> Engine:
    """Build the engine named by ``kind`` ("auto" | "torch" | "vllm") for ``model`` (a live HF/peft model).

    ``dtype`` is the compute dtype of the torch engine: a torch dtype, or the recipe's ``model.dtype``
    ("auto" | "bf16" | "fp32"), which stages pass so that generation and training agree; None means "auto".
    """
    if kind not in KINDS:
        raise UserError(f"engine: expected one of {', '.join(KINDS)}, got {kind!r}")
    if kind == "vllm" or (kind == "auto" and vllm_available()):
        if not vllm_available():
            raise UserError("engine: vllm needs the vllm package and a CUDA GPU "
                            "(pip install vllm), or use engine: torch")
        from reasonloop.generate.vllm_engine import VllmEngine

        return track(VllmEngine(model, tokenizer, max_batch=max_batch, progress=progress), "vllm engine")
    from reasonloop.generate.torch_engine import TorchEngine

    return track(TorchEngine(model, tokenizer, max_batch=max_batch, dtype=dtype, progress=progress), "torch engine")
