"""bench/gpu_check.py on a machine without CUDA: it stops at once, says why, and exits 2 (any machine: CUDA is
hidden from the script here, so the test means the same on a GPU machine)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "gpu_check.py"


def test_without_cuda_it_exits_2_with_a_message(monkeypatch, capsys, tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu_check, "OUT", tmp_path / "gpu_check.json")
    with pytest.raises(SystemExit) as stop:
        gpu_check.main()
    assert stop.value.code == 2
    out = capsys.readouterr()
    assert out.out == "" and out.err.startswith("gpu_check: no CUDA device here")
    assert "this check needs one GPU, and nothing was run" in out.err
    assert not (tmp_path / "gpu_check.json").exists()
