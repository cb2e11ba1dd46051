"""Engine selection and the vLLM engine's pure helpers (vllm itself is optional)."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import pytest
import torch

from conftest import build_tiny_model
from reasonloop.errors import UserError
from reasonloop.generate import make_engine, vllm_available
from reasonloop.generate.torch_engine import TorchEngine
from reasonloop.generate.vllm_engine import finish_of, merged_state


def test_auto_picks_torch_without_vllm_gpu(tokenizer):
    if vllm_available():
        pytest.skip("vllm and a GPU are present: auto picks vLLM here")
    eng = make_engine(build_tiny_model(len(tokenizer)), tokenizer, progress=False)
    assert isinstance(eng, TorchEngine) and eng.fast is not None
    assert eng.eos == {2}  # SmolLM2's <|im_end|>


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None and torch.cuda.is_available(),
                    reason="vllm usable here")
def test_vllm_without_vllm_says_what_to_do(tokenizer):
    with pytest.raises(UserError, match="^engine: vllm needs the vllm package and a CUDA GPU"):
        make_engine(build_tiny_model(len(tokenizer)), tokenizer, kind="vllm")


def test_vllm_finish_reasons_map_onto_ours():
    out = lambda reason, stop: SimpleNamespace(finish_reason=reason, stop_reason=stop)  # noqa: E731
    assert finish_of(out("length", None), {2}) == "length"
    assert finish_of(out("stop", None), {2}) == "eos"
    assert finish_of(out("stop", 2), {2}) == "eos"
    assert finish_of(out("stop", "\n\n"), {2}) == "stop"


def test_merged_state_folds_lora_into_plain_names(tokenizer):
    from peft import LoraConfig, get_peft_model

    base = build_tiny_model(64)
    plain = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.fill_(0.1)
    state = dict(merged_state(model))
    assert set(state) == set(plain)
    q = "model.layers.0.self_attn.q_proj.weight"
    layer = model.base_model.model.model.layers[0].self_attn.q_proj
    assert torch.allclose(state[q], plain[q] + layer.get_delta_weight("default"))
    assert torch.equal(state["model.layers.0.mlp.up_proj.weight"], plain["model.layers.0.mlp.up_proj.weight"])
    assert torch.allclose(layer.base_layer.weight, plain[q], atol=1e-6)  # unmerged again (merge+unmerge rounds)
