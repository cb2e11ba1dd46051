"""The vLLM engine (Kwon et al. 2023, "Efficient Memory Management for LLM Serving with PagedAttention").

Used when vllm is installed and a CUDA GPU is present. The live policy is written once as an HF folder
(LoRA merged) for vLLM to load; ``update_weights`` then pushes the current parameters into the running
vLLM model in place, as TRL's colocated GRPO does, so no folder is written per training step.
This module imports vllm lazily: the package and its tests work without it.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from reasonloop.generate.base import Sample, SamplingParams
from reasonloop.generate.sampling import check_keys, check_params, default_keys
from reasonloop.generate.bookkeeping import eos_ids


def merged_state(model):
    """(name, tensor) pairs of the plain HF model, with any peft LoRA merged in (Hu et al. 2021)."""
    if hasattr(model, "merge_adapter") and hasattr(model, "peft_config"):
        model.merge_adapter()
        try:
            state = {}
            for name, tensor in model.state_dict().items():
                if "lora_" in name or "modules_to_save" in name:
                    continue
                name = name.removeprefix("base_model.model.").replace(".base_layer", "")
                state[name] = tensor.detach().clone()
        finally:
            model.unmerge_adapter()
        return list(state.items())
    return [(name, tensor.detach()) for name, tensor in model.state_dict().items()]


def finish_of(output, eos: set[int]) -> str:
    """Map a vLLM CompletionOutput's finish/stop reason onto eos | stop | length."""
    if output.finish_reason == "length":
        return "length"
    if isinstance(output.stop_reason, str):
        return "stop"
    return "eos"  # stop_reason None (the model's EOS) or an int (one of our stop_token_ids = EOS ids)


class VllmEngine:
    def __init__(self, model, tokenizer, max_batch: int = 64, progress: bool = True,
                 gpu_memory_utilization: float = 0.5):
        # In-process engine core: update_weights reaches the model object directly (TRL does the same).
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        from vllm import LLM

        from reasonloop.models import save_hf_folder

        self.tokenizer, self.progress = tokenizer, progress
        self.eos = eos_ids(model, tokenizer)
        self._folder = tempfile.TemporaryDirectory(prefix="reasonloop-vllm-")
        path = save_hf_folder(model, tokenizer, Path(self._folder.name) / "policy")
        self.llm = LLM(model=str(path), max_num_seqs=max_batch, enable_prefix_caching=True,
                       gpu_memory_utilization=gpu_memory_utilization, dtype="auto",
                       logprobs_mode="processed_logprobs")

    def update_weights(self, model) -> None:
        weights = merged_state(model)
        runner = self.llm.llm_engine.model_executor.driver_worker.worker.model_runner
        runner.model.load_weights(weights)
        self.llm.reset_prefix_cache()  # cached prompt KV was computed with the old weights

    def generate(self, prompts: list[list[int]], params: SamplingParams, progress: bool | None = None,
                 keys: list[list[int]] | None = None) -> list[list[Sample]]:
        """Log-probs are vLLM's ``processed_logprobs``: after temperature *and* top-k/top-p/min-p
        renormalisation (the torch engine reports them before truncation; equal when no filter is on).

        One request per (prompt, sample), each with its own ``seed`` (its key): vLLM then draws each sample
        from its own generator, whatever else is batched with it (vLLM fans ``n > 1`` out into one request
        per sample anyway, and prefix caching shares the prompt's KV)."""
        from vllm import SamplingParams as VllmParams
        from vllm.inputs import TokensPrompt

        check_params(params)
        keys = default_keys(prompts, params) if keys is None else keys
        check_keys(keys, len(prompts), params.n)
        base = dict(n=1, temperature=params.temperature, top_p=params.top_p,
                    top_k=params.top_k if params.top_k > 0 else -1, min_p=params.min_p,
                    max_tokens=params.max_new_tokens, stop=list(params.stop) or None,
                    stop_token_ids=sorted(self.eos), logprobs=0, skip_special_tokens=True)
        requests = [(i, j) for i in range(len(prompts)) for j in range(params.n)]
        vparams = [VllmParams(seed=keys[i][j] & (2 ** 63 - 1), **base) for i, j in requests]
        show = self.progress if progress is None else progress
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=prompts[i]) for i, _ in requests], vparams,
                                 use_tqdm=show)
        result: list[list[Sample]] = [[] for _ in prompts]
        for (index, _), out in zip(requests, outs):
            comp = out.outputs[0]
            ids = list(comp.token_ids)
            lps = [step[tok].logprob for step, tok in zip(comp.logprobs, ids)]
            result[index].append(Sample(prompt_index=index, token_ids=ids, logprobs=lps,
                                        finish_reason=finish_of(comp, self.eos), text=comp.text))
        return result
