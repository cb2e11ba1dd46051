"""Log-probs of target tokens through the LM head without materialising full-vocabulary logits.

With a 49k vocabulary the head's logits dominate SFT memory: [N, V] fp32 is 400 MB for N = 2048,
and autograd keeps several such tensors (logits, log-softmax, their gradients). ``token_logprobs``
computes the head chunk by chunk over positions, so only [chunk, V] exists at once, and its
backward (a custom autograd Function) recomputes each chunk's logits instead of storing them.
This is the "fused linear cross-entropy" idea of Liger-Kernel (Hsu et al. 2024, "Liger Kernel:
Efficient Triton Kernels for LLM Training") and of Cut Cross-Entropy (Wijmans et al. 2024, "Cut Your
Losses in Large-Vocabulary Language Models"), generalised to return per-token values (entropy and the
KL to a reference model too) rather than one reduced loss, so any objective can sit on top.

Gradients, with z the logits of one position, p = softmax(z), H the entropy, q the reference:
  d logp_y / dz = onehot(y) - p
  d H / dz      = -p * (log p + H)
  d KL(p||q)/dz = p * (log p - log q - KL)
The reference side is a constant (no gradient flows into ref_hidden / ref_weight).
"""

from __future__ import annotations

import torch

from reasonloop.algos.kl import full_kl


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Softmax math runs in fp32 at least (bf16/fp16 inputs are upcast; fp64 stays fp64)."""
    return torch.promote_types(dtype, torch.float32)


def _logits(h: torch.Tensor, w: torch.Tensor, scale: float) -> torch.Tensor:
    """[c, H] x [V, H] -> [c, V] logits divided by the temperature (scaled on the small [c, H] side)."""
    if scale != 1.0:
        h = h * scale
    return (h @ w.T).to(_acc_dtype(h.dtype))


def _row_dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum(a * b, -1) for [c, V] inputs without allocating the [c, V] product."""
    return torch.bmm(a.unsqueeze(1), b.unsqueeze(2)).view(-1)  # [c]


class _ChunkedTokenLogprobs(torch.autograd.Function):
    # Matmuls run in `mm_dtype` (the autocast dtype when the caller is under autocast, else the input's):
    # forward and backward cast explicitly with autocast off, so the logits recomputed in backward are
    # bit-identical to the forward's and the saved log-sum-exp normalises them exactly.
    @staticmethod
    def forward(ctx, hidden, weight, targets, ref_hidden, ref_weight, chunk_size, scale, with_entropy,
                mm_dtype, frozen_head):
        ctx.set_materialize_grads(False)  # unused outputs (entropy, kl) get None: skip their terms
        n, w = hidden.shape[0], weight.to(mm_dtype)
        f32 = dict(dtype=_acc_dtype(mm_dtype), device=hidden.device)
        logp, lse = torch.empty(n, **f32), torch.empty(n, **f32)  # [N] each
        entropy = torch.empty(n, **f32) if with_entropy else None
        has_ref = ref_hidden is not None
        kl, ref_lse = (torch.empty(n, **f32), torch.empty(n, **f32)) if has_ref else (None, None)
        rw = ref_weight.to(mm_dtype) if has_ref else None
        # Frozen head, logp only (e.g. LoRA): d logp_y / d h = (w_y - E_p[w]) * scale, so keep E_p[w] [N, H]
        # from the forward's softmax and skip the recomputation in backward.
        mean_w = torch.empty(n, hidden.shape[1], **f32) if frozen_head else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, chunk_size):
                e = min(s + chunk_size, n)
                z = _logits(hidden[s:e].to(mm_dtype), w, scale)  # [c, V]
                target_logit = z.gather(1, targets[s:e, None]).squeeze(1)  # [c]
                if not (with_entropy or has_ref):  # logp only: log-sum-exp in place, one [c, V] buffer
                    m = z.amax(dim=-1)  # [c]
                    ez = z.sub_(m[:, None]).exp_()  # [c, V] = p * total
                    total = ez.sum(-1)  # [c]
                    lse[s:e] = m + total.log()
                    logp[s:e] = target_logit - lse[s:e]
                    if frozen_head:
                        mean_w[s:e] = (ez.to(mm_dtype) @ w).to(f32["dtype"]) / total[:, None]
                    continue
                lse[s:e] = torch.logsumexp(z, dim=-1)
                logp[s:e] = target_logit - lse[s:e]
                log_p = z.sub_(lse[s:e, None])  # [c, V], in place: no second [c, V] buffer beside p
                p = log_p.exp()  # [c, V]
                if with_entropy:
                    entropy[s:e] = -_row_dot(p, log_p)  # H = -sum p log p
                if has_ref:
                    zr = _logits(ref_hidden[s:e].to(mm_dtype), rw, scale)  # [c, V]
                    ref_lse[s:e] = torch.logsumexp(zr, dim=-1)
                    # KL = sum p (log p - log q), both shifted alike: exactly 0 for a model against itself
                    kl[s:e] = _row_dot(p, log_p.sub_(zr.sub_(ref_lse[s:e, None])))
        ctx.save_for_backward(hidden, weight, targets, lse, entropy, ref_hidden, ref_weight, ref_lse, kl,
                              mean_w)
        ctx.chunk_size, ctx.scale, ctx.mm_dtype = chunk_size, scale, mm_dtype
        return logp, entropy, kl

    @staticmethod
    def backward(ctx, g_logp, g_ent, g_kl):
        hidden, weight, targets, lse, entropy, ref_hidden, ref_weight, ref_lse, kl, mean_w = ctx.saved_tensors
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        nothing = (None,) * 8
        if not (need_h or need_w) or (g_logp is None and g_ent is None and g_kl is None):
            return (None, None) + nothing
        if mean_w is not None:  # frozen head: no [c, V] work at all
            w_target = weight[targets].to(mean_w.dtype)  # [N, H]
            grad_h = g_logp[:, None] * (w_target - mean_w) * ctx.scale  # [N, H]
            return (grad_h.to(hidden.dtype), None) + nothing
        n, scale, mm = hidden.shape[0], ctx.scale, ctx.mm_dtype
        w = weight.to(mm)
        rw = ref_weight.to(mm) if g_kl is not None else None
        grad_h = torch.empty_like(hidden) if need_h else None
        acc = _acc_dtype(weight.dtype)  # bf16 matmuls: accumulate the chunks' weight gradients in fp32
        grad_w = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        with torch.autocast(hidden.device.type, enabled=False):
            for s in range(0, n, ctx.chunk_size):
                e = min(s + ctx.chunk_size, n)
                h = hidden[s:e].to(mm) * scale if scale != 1.0 else hidden[s:e].to(mm)  # [c, H]
                dz = _chunk_grad_logits(_logits(h, w, 1.0), lse[s:e], targets[s:e], _part(g_logp, s, e),
                                        _part(g_ent, s, e), _part(entropy, s, e), _part(g_kl, s, e),
                                        _part(kl, s, e), _part(ref_lse, s, e),
                                        None if g_kl is None else _logits(ref_hidden[s:e].to(mm), rw, scale))
                dz = dz.to(mm)  # [c, V]
                if need_h:
                    grad_h[s:e] = (dz @ w).mul_(scale) if scale != 1.0 else dz @ w
                if need_w and acc == mm:
                    grad_w.addmm_(dz.T, h)  # h already carries the temperature scale
                elif need_w:
                    grad_w += (dz.T @ h).to(acc)
        return grad_h, None if grad_w is None else grad_w.to(weight.dtype), *nothing


def _part(t: torch.Tensor | None, s: int, e: int) -> torch.Tensor | None:
    return None if t is None else t[s:e]


def _chunk_grad_logits(z, lse, targets, g_logp, g_ent, entropy, g_kl, kl, ref_lse, zr):
    """d loss / d z for one chunk [c, V], written as dz = g_logp * onehot(y) - p * coef, where
    coef = g_logp + g_ent * (log p + H) - g_kl * (log p - log q - KL), in place on the chunk's buffers."""
    z = z.to(_acc_dtype(z.dtype))  # [c, V]
    zero = torch.zeros_like(lse)  # [c]
    g_lp = zero if g_logp is None else g_logp
    if g_ent is None and g_kl is None:  # the common case (SFT, PPO): one [c, V] buffer, all in place
        dz = z.sub_(lse[:, None]).exp_().mul_(-g_lp[:, None])
    else:
        p = torch.exp(z - lse[:, None])  # [c, V]
        # coef is linear in z and zr: z * (g_ent - g_kl) + zr * g_kl + const (per row), with
        # log p = z - lse, log q = zr - ref_lse.
        g_h = zero if g_ent is None else g_ent
        g_k = zero if g_kl is None else g_kl
        const = g_lp + g_h * ((zero if entropy is None else entropy) - lse)  # [c]
        if g_kl is not None:
            const = const - g_k * (ref_lse - lse - kl)
        coef = z.mul_((g_h - g_k)[:, None])  # z is no longer needed: reuse its buffer
        if g_kl is not None:
            coef.add_(zr.mul_(g_k[:, None]))
        coef.add_(const[:, None])
        dz = p.mul_(coef).neg_()
    if g_logp is not None:
        dz.scatter_add_(1, targets[:, None], g_logp[:, None].to(dz.dtype))
    return dz


def token_logprobs(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                   chunk_size: int = 512, with_entropy: bool = False,
                   ref_hidden: torch.Tensor | None = None, ref_weight: torch.Tensor | None = None,
                   temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """Per-position log-prob of ``targets`` under ``softmax(hidden @ weight.T / temperature)``.

    hidden [N, H]: final hidden states at the positions that have a loss only (gather them from
    [B, T, H] with the response mask, so no head compute goes to prompt or padding); weight [V, H]:
    the LM head (the tied embedding for SmolLM2); targets [N] (long): the next tokens. ``chunk_size``
    positions go through the head at once: on the 2-core AVX2 CPU, chunks of 256, 512 and 1024 cost the
    same time within noise (N=2048, V=49152) while peak memory scales with the chunk (112/206/396 MB).
    Returns ``logp`` [N] (fp32, or fp64 for fp64 inputs), plus ``entropy`` [N] if ``with_entropy``, plus ``kl`` [N] =
    KL(pi || pi_ref) over the full vocabulary if ``ref_hidden`` [N, H] (the frozen reference model's
    hidden states) is given; ``ref_weight`` defaults to ``weight`` (e.g. LoRA, where the head is shared).
    All three are differentiable w.r.t. hidden and weight; peak extra memory is a few [chunk, V] buffers.
    Under autocast the head's matmuls run in the autocast dtype, the softmax math in fp32. With a frozen
    head (no gradient for weight, e.g. LoRA) and logp only, the forward keeps E_p[w] [N, H] so the
    backward needs no [chunk, V] work.
    """
    if hidden.dim() != 2 or weight.dim() != 2 or hidden.shape[1] != weight.shape[1]:
        raise ValueError(f"token_logprobs: need hidden [N, H] and weight [V, H]; got "
                         f"{tuple(hidden.shape)} and {tuple(weight.shape)}")
    if targets.shape != hidden.shape[:1] or targets.dtype != torch.long:
        raise ValueError(f"token_logprobs: targets must be a long tensor [N] = [{hidden.shape[0]}]; got "
                         f"{targets.dtype} {tuple(targets.shape)}")
    if ref_hidden is not None and ref_hidden.shape != hidden.shape:
        raise ValueError(f"token_logprobs: ref_hidden must have hidden's shape {tuple(hidden.shape)}; "
                         f"got {tuple(ref_hidden.shape)}")
    if ref_hidden is None and ref_weight is not None:
        raise ValueError("token_logprobs: ref_weight given without ref_hidden")
    if chunk_size < 1 or temperature <= 0:
        raise ValueError(f"token_logprobs: chunk_size must be >= 1 and temperature > 0; got "
                         f"chunk_size={chunk_size}, temperature={temperature}")
    if ref_hidden is not None:
        ref_hidden = ref_hidden.detach()
        ref_weight = (weight if ref_weight is None else ref_weight).detach()
    device = hidden.device.type
    mm_dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else hidden.dtype
    frozen_head = (torch.is_grad_enabled() and hidden.requires_grad and not weight.requires_grad
                   and not with_entropy and ref_hidden is None)
    logp, entropy, kl = _ChunkedTokenLogprobs.apply(hidden, weight, targets, ref_hidden, ref_weight,
                                                    chunk_size, 1.0 / temperature, with_entropy, mm_dtype,
                                                    frozen_head)
    out = {"logp": logp}
    if entropy is not None:
        out["entropy"] = entropy
    if kl is not None:
        out["kl"] = kl
    return out


def token_logprobs_full(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                        with_entropy: bool = False, ref_hidden: torch.Tensor | None = None,
                        ref_weight: torch.Tensor | None = None, temperature: float = 1.0
                        ) -> dict[str, torch.Tensor]:
    """The same values as ``token_logprobs`` from full [N, V] logits and plain autograd.

    The reference the chunked version is tested and benchmarked against; fine for small N or V.
    """
    logits = (hidden @ weight.T).to(_acc_dtype(hidden.dtype)) / temperature  # [N, V]
    logp_all = torch.log_softmax(logits, dim=-1)  # [N, V]
    out = {"logp": logp_all.gather(1, targets[:, None]).squeeze(1)}
    if with_entropy:
        out["entropy"] = -(logp_all.exp() * logp_all).sum(-1)
    if ref_hidden is not None:
        ref_w = weight if ref_weight is None else ref_weight
        ref_logits = (ref_hidden.detach() @ ref_w.detach().T).to(logits.dtype) / temperature  # [N, V]
        out["kl"] = full_kl(logits, ref_logits)
    return out
