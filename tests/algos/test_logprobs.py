import pytest
import torch

from reasonloop.algos.logprobs import token_logprobs, token_logprobs_full

N, H, V = 45, 24, 301  # N not a multiple of the chunk: the last chunk is short


def make(dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(N, H, generator=g, dtype=dtype).requires_grad_()
    weight = (torch.randn(V, H, generator=g, dtype=dtype) * 0.3).requires_grad_()
    ref_hidden = hidden.detach() + 0.3 * torch.randn(N, H, generator=g, dtype=dtype)
    ref_weight = weight.detach() + 0.05 * torch.randn(V, H, generator=g, dtype=dtype)
    targets = torch.randint(0, V, (N,), generator=g)
    return hidden, weight, targets, ref_hidden, ref_weight


def test_full_reference_matches_hand_computed_softmax():
    hidden = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]])  # logits row 0: [1, 0, 0]; row 1: [0, 2, 0]
    out = token_logprobs_full(hidden, weight, torch.tensor([0, 2]), with_entropy=True)
    e = torch.e
    p0 = torch.tensor([e, 1, 1]) / (e + 2)
    assert out["logp"][0].item() == pytest.approx(1 - torch.log(torch.tensor(e + 2)).item(), rel=1e-6)
    assert out["logp"][1].item() == pytest.approx(-torch.log(torch.tensor(e ** 2 + 2)).item(), rel=1e-6)
    assert out["entropy"][0].item() == pytest.approx(-(p0 * p0.log()).sum().item(), rel=1e-6)
    chunked = token_logprobs(hidden, weight, torch.tensor([0, 2]), chunk_size=1, with_entropy=True)
    torch.testing.assert_close(chunked["logp"], out["logp"])
    torch.testing.assert_close(chunked["entropy"], out["entropy"])


@pytest.mark.parametrize("chunk_size", [1, 16, 1000])
def test_logp_only_values_and_gradients_match_full_logits_fp32(chunk_size):
    hidden, weight, targets, _, _ = make()
    fast = token_logprobs(hidden, weight, targets, chunk_size=chunk_size)
    slow = token_logprobs_full(hidden, weight, targets)
    assert set(fast) == {"logp"}
    torch.testing.assert_close(fast["logp"], slow["logp"], rtol=1e-5, atol=1e-5)
    c = torch.rand(N, generator=torch.Generator().manual_seed(1))  # per-token loss weights, e.g. DFT's sg(p)
    got = torch.autograd.grad((c * fast["logp"]).sum(), (hidden, weight))
    want = torch.autograd.grad((c * slow["logp"]).sum(), (hidden, weight))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [1, 16, 1000])
@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_values_and_gradients_match_full_logits_fp32(chunk_size, temperature):
    hidden, weight, targets, ref_hidden, ref_weight = make()
    kw = dict(with_entropy=True, ref_hidden=ref_hidden, ref_weight=ref_weight, temperature=temperature)
    fast = token_logprobs(hidden, weight, targets, chunk_size=chunk_size, **kw)
    slow = token_logprobs_full(hidden, weight, targets, **kw)
    assert set(fast) == {"logp", "entropy", "kl"}
    for key in fast:
        torch.testing.assert_close(fast[key], slow[key], rtol=1e-5, atol=1e-5)
    # one backward through all three outputs, with arbitrary per-token weights (as a loss would apply)
    c = torch.randn(3, N, generator=torch.Generator().manual_seed(1))

    def loss(o):
        return (c[0] * o["logp"]).sum() + (c[1] * o["entropy"]).sum() + (c[2] * o["kl"]).sum()

    got = torch.autograd.grad(loss(fast), (hidden, weight))
    want = torch.autograd.grad(loss(slow), (hidden, weight))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("outputs", [("logp",), ("entropy",), ("kl",), ("logp", "kl")])
def test_each_gradient_term_alone_is_exact_in_fp64(outputs):
    hidden, weight, targets, ref_hidden, ref_weight = make(torch.float64)
    kw = dict(with_entropy=True, ref_hidden=ref_hidden, ref_weight=ref_weight)
    fast = token_logprobs(hidden, weight, targets, chunk_size=7, **kw)
    slow = token_logprobs_full(hidden, weight, targets, **kw)
    got = torch.autograd.grad(sum(fast[k].sum() for k in outputs), (hidden, weight))
    want = torch.autograd.grad(sum(slow[k].sum() for k in outputs), (hidden, weight))
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-10)


def test_frozen_head_gets_no_gradient_and_reference_is_constant():
    hidden, weight, targets, ref_hidden, _ = make()
    frozen = weight.detach()
    ref_hidden.requires_grad_()
    out = token_logprobs(hidden, frozen, targets, chunk_size=8, ref_hidden=ref_hidden)  # ref_weight = weight
    (out["logp"].sum() + out["kl"].sum()).backward()
    assert hidden.grad is not None and ref_hidden.grad is None
    want = token_logprobs_full(hidden.detach().requires_grad_(), frozen, targets, ref_hidden=ref_hidden)
    torch.testing.assert_close(out["kl"], want["kl"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_frozen_head_logp_only_gradient_matches_full_logits(temperature):
    # the LoRA case: a shortcut keeps E_p[w] from the forward instead of recomputing logits in backward
    hidden, weight, targets, _, _ = make()
    frozen = weight.detach()
    c = torch.rand(N, generator=torch.Generator().manual_seed(2))
    fast = token_logprobs(hidden, frozen, targets, chunk_size=16, temperature=temperature)["logp"]
    slow = token_logprobs_full(hidden, frozen, targets, temperature=temperature)["logp"]
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    got, = torch.autograd.grad((c * fast).sum(), hidden)
    want, = torch.autograd.grad((c * slow).sum(), hidden)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_kl_is_zero_against_itself_and_no_grad_mode_works():
    hidden, weight, targets, _, _ = make()
    with torch.no_grad():
        out = token_logprobs(hidden, weight, targets, chunk_size=10, ref_hidden=hidden, ref_weight=weight)
    assert out["kl"].abs().max().item() < 1e-5
    assert not out["logp"].requires_grad


def test_bf16_autocast_matches_full_logits_under_autocast():
    hidden, weight, targets, _, _ = make()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = token_logprobs(hidden, weight, targets, chunk_size=16)
        slow = token_logprobs_full(hidden, weight, targets)
    assert fast["logp"].dtype == torch.float32
    torch.testing.assert_close(fast["logp"], slow["logp"], rtol=1e-4, atol=1e-4)
    got = torch.autograd.grad(fast["logp"].sum(), (hidden, weight))
    want = torch.autograd.grad(slow["logp"].sum(), (hidden, weight))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32
        torch.testing.assert_close(g, w, rtol=2e-2, atol=2e-2)


def test_bad_shapes_are_named():
    hidden, weight, targets, _, _ = make()
    with pytest.raises(ValueError, match=r"need hidden \[N, H\] and weight \[V, H\]; got \(45, 24\) and \(301, 23\)"):
        token_logprobs(hidden, weight[:, :23], targets)
    with pytest.raises(ValueError, match=r"targets must be a long tensor \[N\] = \[45\]; got torch.int32 \(45,\)"):
        token_logprobs(hidden, weight, targets.int())
    with pytest.raises(ValueError, match=r"ref_hidden must have hidden's shape \(45, 24\); got \(44, 24\)"):
        token_logprobs(hidden, weight, targets, ref_hidden=hidden[1:])
    with pytest.raises(ValueError, match="chunk_size must be >= 1 and temperature > 0"):
        token_logprobs(hidden, weight, targets, temperature=0.0)
