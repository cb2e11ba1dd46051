"""A fast decode path for Llama-family models (Llama, Qwen2, SmolLM) that reads the live HF module's weights.

Why not the HF forward: at batch 64 a 135M model spends much of each decode step in per-module Python,
a growing cache concatenated every step and mask building. Here the q/k/v and gate/up projections are
fused into one matmul each, the KV cache is preallocated as ``[layers, slots, kv_heads, max_len,
head_dim]`` and written in place, and the active rows always occupy slots ``0..B-1`` so attention
reads a view of the cache, never a gathered copy. Architecture: Touvron et al. 2023 (Llama).
"""

from __future__ import annotations

from itertools import accumulate

import torch
import torch.nn.functional as F

from reasonloop.models import unwrap  # the plain HF model under peft/DDP; LoRA is folded in by effective_weight

FAST_MODEL_TYPES = ("llama", "qwen2")


def supports_fast_path(model) -> bool:
    cfg = unwrap(model).config
    if getattr(cfg, "model_type", None) not in FAST_MODEL_TYPES:
        return False
    if getattr(cfg, "use_sliding_window", False) or getattr(cfg, "mlp_bias", False):
        return False
    return getattr(cfg, "hidden_act", "silu") == "silu"


def effective_weight(linear) -> torch.Tensor:
    """The weight a linear layer applies, with active, unmerged peft LoRA deltas added (Hu et al. 2021)."""
    base = getattr(linear, "base_layer", None)
    if base is None:
        return linear.weight
    w = base.weight
    if not getattr(linear, "merged", False) and not getattr(linear, "disable_adapters", False):
        for name in linear.active_adapters:
            if name in getattr(linear, "lora_A", {}):
                w = w + linear.get_delta_weight(name)
    return w


def _bias(linear):
    return getattr(getattr(linear, "base_layer", linear), "bias", None)


WEIGHT_FIRST_MAX_ROWS = 256


def _linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """``F.linear(x, weight, bias)``; on CPU in fp32 with at most 256 rows computed as ``(weight @ x^T)^T``,
    a transposed view.

    Why: MKL's sgemm runs a decode step's shapes 1.1-1.5x faster with the weight as the left operand
    (SmolLM2-135M, all 30 layers' qkv, o, gate_up and down, 2-core AVX2 EPYC: 49-54 against 65-70 ms at
    16 rows, 105-117 against 130-167 ms at 64, 220-236 against 256-343 ms at 128; the LM head 42-46
    against 53-57 ms at 64). From ~512 rows (prefill waves) the two are level, and the transposed
    output slows the elementwise ops after it, so large inputs keep ``F.linear``. The ops after it accept
    the transposed layout; the elementwise ones keep it, so the down projection's input is already in
    the layout its matmul wants. Other dtypes and devices were not measured and keep ``F.linear``.
    """
    rows = x.numel() // x.shape[-1]
    if x.device.type != "cpu" or x.dtype != torch.float32 or rows > WEIGHT_FIRST_MAX_ROWS:
        return F.linear(x, weight, bias)
    out = torch.mm(weight, x.reshape(rows, -1).t())  # [N, M]
    if bias is not None:
        out += bias[:, None]
    return out.t().view(*x.shape[:-1], weight.shape[0])


def _rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # HF computes the norm in fp32 and casts back; same here so log-probs agree with its forward.
    xf = x.float()
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return weight * xf.to(x.dtype)


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE (Su et al. 2021). x: [B, H, T, D]; cos/sin: [B, 1, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


class LlamaFast:
    """Weights (fused, in the compute dtype), a preallocated KV cache, prefill and batched decode."""

    def __init__(self, model, dtype: torch.dtype, device: torch.device):
        self.dtype, self.device = dtype, device
        self.cfg = unwrap(model).config
        cfg = self.cfg
        self.n_layers = cfg.num_hidden_layers
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.n_heads
        self.eps = cfg.rms_norm_eps
        self.k_cache = self.v_cache = None  # [L, S, KV, max_len, D]
        self.load(model)

    # ------------------------------------------------------------------ weights
    def load(self, model) -> None:
        """(Re)read every weight from the live module; remembers parameter versions to spot later edits."""
        hf = unwrap(model)
        cast = lambda t: None if t is None else t.detach().to(self.device, self.dtype)  # noqa: E731
        # Drop the previous weights before building the new ones: holding both while reloading after an RL
        # step doubled the engine's fused copies (0.28 GB of SmolLM2-135M's qkv and gate_up in fp32).
        self.unload()
        with torch.no_grad():
            for layer in hf.model.layers:
                att, mlp = layer.self_attn, layer.mlp
                biases = [_bias(m) for m in (att.q_proj, att.k_proj, att.v_proj)]
                qkv_b = None if biases[0] is None else cast(torch.cat(biases))
                self.layers.append(dict(
                    ln1=cast(layer.input_layernorm.weight), ln2=cast(layer.post_attention_layernorm.weight),
                    qkv=cast(torch.cat([effective_weight(m) for m in (att.q_proj, att.k_proj, att.v_proj)])),
                    qkv_b=qkv_b, o=cast(effective_weight(att.o_proj)),
                    gate_up=cast(torch.cat([effective_weight(mlp.gate_proj), effective_weight(mlp.up_proj)])),
                    down=cast(effective_weight(mlp.down_proj))))
            self.embed = cast(hf.model.embed_tokens.weight)  # [V, H]
            self.norm = cast(hf.model.norm.weight)
            self.lm_head = cast(effective_weight(hf.lm_head))  # [V, H]
            self.rotary = hf.model.rotary_emb
        self.versions = {id(p): p._version for p in model.parameters()}
        self.source_params = list(model.parameters())
        self.cos = self.sin = None

    def stale(self) -> bool:
        """True when the weights were unloaded or any parameter of the source model changed in place since
        ``load`` (optimizer step)."""
        return not self.layers or any(self.versions.get(id(p)) != p._version for p in self.source_params)

    def unload(self) -> None:
        """Drop the fused weight copies until the next ``load``: between an RL rollout and the engine's next
        use they would sit through the policy update (0.28 GB for SmolLM2-135M in fp32, where only qkv and
        gate_up are copies; the whole model at half size in bf16)."""
        self.layers, self.embed, self.norm, self.lm_head = [], None, None, None
        self.versions, self.source_params = {}, []

    def _rope_tables(self, max_len: int) -> None:
        if self.cos is not None and self.cos.shape[0] >= max_len:
            return
        pos = torch.arange(max_len, device=self.device)[None]  # [1, T]
        probe = torch.zeros(1, dtype=torch.float32, device=self.device)
        cos, sin = self.rotary(probe, pos)  # [1, T, D], attention scaling folded in by HF
        self.cos, self.sin = cos[0].to(self.dtype), sin[0].to(self.dtype)  # [T, D]

    def allocate(self, slots: int, max_len: int) -> None:
        """Make sure the KV cache holds ``slots`` sequences of ``max_len`` tokens."""
        shape = (self.n_layers, slots, self.n_kv, max_len, self.head_dim)
        if self.k_cache is None or any(a < b for a, b in zip(self.k_cache.shape, shape)):
            self.k_cache = self.v_cache = None  # the old cache goes before the new one is zeroed, not after
            self.k_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
            self.v_cache = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self._rope_tables(max_len)

    def release_cache(self) -> None:
        """Drop the KV cache between generate calls. It is sized for the call's batch (SmolLM2-135M in fp32:
        45 KB per token and slot, 0.5 GB for 128 slots x 88 tokens, 2 GB for RL's 512 samples) and would
        otherwise stay allocated through the RL update and the stage's other work; zeroing it again at the
        next call costs far less than one decode step per token."""
        self.k_cache = self.v_cache = None

    # ------------------------------------------------------------------ compute
    def _qkv(self, w: dict, x: torch.Tensor, cos, sin):
        """x: [B, T, H] -> q [B, NH, T, D], k/v [B, KV, T, D] with RoPE applied to q and k."""
        b, t, _ = x.shape
        h = _rms_norm(x, w["ln1"], self.eps)
        qkv = _linear(h, w["qkv"], w["qkv_b"])  # [B, T, (NH + 2 KV) D]
        qkv = qkv.reshape(b, t, self.n_heads + 2 * self.n_kv, self.head_dim).transpose(1, 2)
        q, k, v = qkv.split([self.n_heads, self.n_kv, self.n_kv], dim=1)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def _mlp(self, w: dict, x: torch.Tensor) -> torch.Tensor:
        h = _rms_norm(x, w["ln2"], self.eps)
        gate, up = _linear(h, w["gate_up"]).chunk(2, dim=-1)  # [B, T, I] each
        return x + _linear(F.silu(gate) * up, w["down"])

    def prefill(self, prompts: list[list[int]], slots: list[int], start: int = 0) -> torch.Tensor:
        """Prefill several prompts in one forward, each into its own slot; their last logits [P, V] (fp32).

        Why one forward: at small batch a forward is bound by reading the weights (~540 MB in fp32), so
        one prompt at a time costs about as much as many. The prompts are packed end to end, not padded:
        GSM8K questions vary from ~30 to ~200 tokens, and right-padding a wave to its longest prompt
        nearly doubled the tokens run (7946 for 4264 real ones over 64 test questions). Matmuls, norms
        and the MLP run on the packed rows; attention runs per prompt on its own slot of the cache.
        ``start``: every slot already holds a shared prefix of that many positions (``restore``), which
        each prompt continues.
        """
        lengths = [len(ids) for ids in prompts]
        total, longest = sum(lengths), max(lengths)
        ids = torch.tensor([t for p in prompts for t in p], device=self.device)  # [N]
        offsets = [0, *accumulate(lengths)]  # prompt r occupies packed rows offsets[r]:offsets[r + 1]
        slot_of = torch.tensor([s for s, n in zip(slots, lengths) for _ in range(n)], device=self.device)  # [N]
        pos_of = torch.cat([torch.arange(start, start + n, device=self.device) for n in lengths])  # [N]
        x = self.embed[ids][None]  # [1, N, H]
        cos, sin = self.cos[pos_of][None, None], self.sin[pos_of][None, None]  # [1, 1, N, D]
        # Query j of a prompt sees the prefix and its own tokens 0..j; one mask serves every prompt (sliced).
        span = torch.arange(start + longest, device=self.device)
        mask = span[None] <= torch.arange(start, start + longest, device=self.device)[:, None]  # [T, start + T]
        att = torch.empty(total, self.n_heads * self.head_dim, dtype=self.dtype, device=self.device)  # [N, NH D]
        for i, w in enumerate(self.layers):
            q, k, v = self._qkv(w, x, cos, sin)  # q [1, NH, N, D]; k, v [1, KV, N, D]
            self.k_cache[i, slot_of, :, pos_of] = k[0].transpose(0, 1)  # [N, KV, D]
            self.v_cache[i, slot_of, :, pos_of] = v[0].transpose(0, 1)
            for slot, n, lo in zip(slots, lengths, offsets):
                keys = self.k_cache[i, slot, :, :start + n][None]  # [1, KV, start + n, D], a view
                values = self.v_cache[i, slot, :, :start + n][None]
                out = F.scaled_dot_product_attention(q[:, :, lo:lo + n], keys, values,
                                                     attn_mask=mask[:n, :start + n], enable_gqa=True)
                att[lo:lo + n] = out[0].transpose(0, 1).reshape(n, -1)  # [n, NH D]
            x = x + _linear(att, w["o"])[None]
            x = self._mlp(w, x)
        last = x[0, torch.tensor(offsets[1:], device=self.device) - 1]  # [P, H]
        return F.linear(_rms_norm(last, self.norm, self.eps), self.lm_head).float()  # [P, V]

    def snapshot(self, slot: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
        """A copy of the first ``length`` cached positions of ``slot``: ([L, KV, T, D], [L, KV, T, D])."""
        return self.k_cache[:, slot, :, :length].clone(), self.v_cache[:, slot, :, :length].clone()

    def restore(self, kv: tuple[torch.Tensor, torch.Tensor], slot: int) -> None:
        k, v = kv
        self.k_cache[:, slot, :, :k.shape[2]] = k
        self.v_cache[:, slot, :, :k.shape[2]] = v

    def copy_slot(self, src: int, dst: int, length: int) -> None:
        """Duplicate the first ``length`` cached positions of ``src`` into ``dst`` (shared prompt, compaction)."""
        self.k_cache[:, dst, :, :length] = self.k_cache[:, src, :, :length]
        self.v_cache[:, dst, :, :length] = self.v_cache[:, src, :, :length]

    def _decode_attention(self, q, keys, values, mask, out) -> None:
        """One query per row against its cached keys, the query heads that share a KV head batched together:
        q [B, KV, NH / KV, D] (already scaled by 1 / sqrt(D)), keys/values [B, KV, T, D] (views of the
        cache), mask [B, 1, 1, T]; writes ``out`` [B, KV, NH / KV, D].

        Why not SDPA: its CPU kernel takes a single query position per (row, head) and walks the keys once
        per query head; here each KV head's keys meet its NH / KV query heads in one small matmul (measured
        at batch 64 over 200 positions: 62 against 75 ms per decode step on a 2-core AVX2 EPYC).
        Scores and softmax in fp32, as HF's eager attention does.
        """
        scores = torch.matmul(q, keys.transpose(-1, -2)).add_(mask)  # [B, KV, G, T]
        probs = scores.softmax(-1, dtype=torch.float32).to(q.dtype)
        torch.matmul(probs, values, out=out)

    def decode(self, tokens: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """One step for the rows in slots 0..B-1. tokens, pos: [B] (pos = index the token is written at).

        Returns logits [B, V] (fp32) for the next token.
        """
        b = tokens.shape[0]
        chunks = attention_chunks(pos.tolist(), ATTENTION_CHUNK_ROWS)
        span = max(end for _, _, end in chunks)
        rows = torch.arange(b, device=self.device)
        x = self.embed[tokens][:, None]  # [B, 1, H]
        cos, sin = self.cos[pos][:, None, None], self.sin[pos][:, None, None]  # [B, 1, 1, D]
        valid = torch.arange(span, device=self.device)[None] <= pos[:, None]  # [B, T]
        mask = torch.zeros(b, 1, 1, span, dtype=self.dtype, device=self.device)
        mask.masked_fill_(~valid[:, None, None], float("-inf"))  # [B, 1, 1, T]
        grouped = (b, self.n_kv, self.n_heads // self.n_kv, self.head_dim)  # [B, KV, G, D]
        att = torch.empty(grouped, dtype=self.dtype, device=self.device)
        for i, w in enumerate(self.layers):
            q, k, v = self._qkv(w, x, cos, sin)  # q [B, NH, 1, D]; k, v [B, KV, 1, D]
            self.k_cache[i, rows, :, pos] = k[:, :, 0]
            self.v_cache[i, rows, :, pos] = v[:, :, 0]
            q = q.reshape(grouped) * self.head_dim ** -0.5
            for lo, hi, end in chunks:  # each run of rows reads the cache up to its own longest row
                self._decode_attention(q[lo:hi], self.k_cache[i, lo:hi, :, :end], self.v_cache[i, lo:hi, :, :end],
                                       mask[lo:hi, ..., :end], att[lo:hi])
            x = x + _linear(att.view(b, 1, -1), w["o"])  # [B, 1, H]
            x = self._mlp(w, x)
        x = _rms_norm(x[:, 0], self.norm, self.eps)  # [B, H]
        return _linear(x, self.lm_head).float().contiguous()  # [B, V]


ATTENTION_CHUNK_ROWS = 32


def attention_chunks(positions: list[int], rows: int = ATTENTION_CHUNK_ROWS) -> list[tuple[int, int, int]]:
    """Split a decode step's rows into runs of ``rows`` consecutive slots, each with the number of cached
    positions its attention reads: (first row, end row, 1 + the run's largest position).

    Why: decode attention reads every row's keys up to the batch's longest row, and GSM8K prompts run from
    ~55 to ~160 tokens (mean 91), so much of what a 64-row step read was masked out. The engine places each
    admission wave longest prompt first and fills a finished row's slot with a row from above it, so slots
    stay roughly in order of length and each run reads little past its own rows. Each run costs a few
    more small ops, so runs are long: in the 64-prompt benchmark call (2-core AVX2 EPYC, interleaved in
    one process) decode attention took 7.6-8.1 s with runs of 32 rows, 8.3-9.1 s with 16, 8.7-9.9 s
    with one run.
    """
    return [(lo, min(lo + rows, len(positions)), max(positions[lo:lo + rows]) + 1)
            for lo in range(0, len(positions), rows)]
