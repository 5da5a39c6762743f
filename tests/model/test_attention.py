"""Attention: SDPA fast path equals the explicit reference; the joint softmax closed forms."""
import math

import pytest
import torch

from elastic_cli.memory.base import Read
from elastic_cli.model import merge
from elastic_cli.model.attention import attend, attend_reference
from elastic_cli.model.layers import Rotary

B, H, D = 3, 2, 8


def tensors(gen, n, start, m, positions=False, dtype=torch.float32, rows=False):
    """rows=True: the memory's validity per row (`Read.rows`, row 1 has none) instead of per key."""
    q = torch.randn(B, H, n, D, generator=gen, dtype=dtype)
    k = torch.randn(B, H, start + n, D, generator=gen, dtype=dtype)
    v = torch.randn(B, H, start + n, D, generator=gen, dtype=dtype)
    if m == 0:
        return q, k, v, Read()
    valid = torch.tensor([[True] * m, [False] * m, [True] * (m - 1) + [False]])
    pos = torch.arange(-m, 0) if positions else None  # e.g. Transformer-XL's cache right before the segment
    read = Read(k=torch.randn(B, H, m, D, generator=gen, dtype=dtype), v=torch.randn(B, H, m, D, generator=gen, dtype=dtype),
                valid=None if rows else valid, pos=pos, rows=torch.tensor([True, False, True]) if rows else None)
    return q, k, v, read


CASES = [(6, 0, 0), (6, 0, 5), (1, 9, 0), (1, 9, 4), (3, 4, 4), (5, 3, 1), (64, 0, 16)]


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("n,start,m", CASES)
def test_fast_equals_reference(n, start, m, positions, rows):
    q, k, v, read = tensors(torch.Generator().manual_seed(n + start + m), n, start, m, positions, rows=rows)
    rotary = Rotary(D)
    torch.testing.assert_close(attend(q, k, v, read, rotary, start), attend_reference(q, k, v, read, rotary, start),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rows", [False, True])
@pytest.mark.parametrize("positions", [False, True])
@pytest.mark.parametrize("n,start,m", CASES)
def test_fast_gradients_equal_reference(n, start, m, positions, rows):
    """Value and the gradient of every input (q, k, v, memory keys and values), in float64; with a
    row mask the unmasked kernel's backward must give rows without memory no memory gradient."""
    q, k, v, read = tensors(torch.Generator().manual_seed(10 * n + start + m), n, start, m, positions, torch.float64,
                            rows=rows)
    rotary = Rotary(D)
    leaves = [q, k, v] + ([read.k, read.v] if m else [])
    weights = torch.randn(B, H, n, D, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    grads = []
    for fn in (attend, attend_reference):
        for x in leaves:
            x.requires_grad_(True)
            x.grad = None
        out = fn(q, k, v, read, rotary, start)
        (out * weights).sum().backward()
        grads.append([out.detach()] + [x.grad.clone() for x in leaves])
    for fast, ref in zip(*grads):
        torch.testing.assert_close(fast, ref, rtol=1e-6, atol=1e-6)  # rope_at rotates in fp32


@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("causal", [True, False])
def test_math_twin_equals_the_fused_kernel(causal, masked):
    """The unfused twin (used where no fused kernel applies) equals the CPU flash kernel, forward
    and backward, including the backward handed a merged output and log-sum-exp; with an additive
    key mask too (the memory part), rows that see some key."""
    gen = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(B, H, 7, D, generator=gen, dtype=torch.float64) for _ in range(3))
    mask = None
    if masked:  # (B, 1, 1, S): row 0 sees every key, row 1 the first two, row 2 all but the last
        seen = torch.tensor([[True] * 7, [True] * 2 + [False] * 5, [True] * 6 + [False]])
        mask = torch.zeros(B, 7, dtype=torch.float64).masked_fill(~seen, float("-inf"))[:, None, None, :]
    part = merge.Part(q, k, v, causal, mask)
    out, lse, extra = merge.fused_forward(part, 0.3)
    out_m, lse_m = merge.math_forward(part, 0.3)
    torch.testing.assert_close(out, out_m)
    torch.testing.assert_close(lse, lse_m)
    dy, y = torch.randn_like(q), torch.randn_like(q)
    merged_lse = lse + torch.rand(lse.shape, generator=gen, dtype=torch.float64)  # as if other keys joined
    for a, b in zip(merge.fused_backward(dy, part, y, merged_lse, 0.3, extra),
                    merge.math_backward(dy, part, y, merged_lse, 0.3)):
        torch.testing.assert_close(a, b)


def test_math_twin_row_that_sees_no_key_has_no_mass():
    """out 0 and lse -inf (so the merge gives it weight 0); the CPU kernel says lse 0 there, which
    `merged_attention` overrides from the valid mask."""
    q, k, v = (torch.randn(1, 1, 2, D, dtype=torch.float64) for _ in range(3))
    out, lse = merge.math_forward(merge.Part(q, k, v, False, torch.full((1, 1, 1, 2), float("-inf"), dtype=torch.float64)), 0.3)
    assert (out == 0).all() and (lse == float("-inf")).all()


def test_memory_with_no_valid_key_anywhere_is_local_attention_exactly():
    """Every row empty (a document start): the fast path skips the memory; same value as the
    reference, and the memory keys and values get no gradient."""
    q, k, v, read = tensors(torch.Generator().manual_seed(12), 6, 0, 3)
    read = read._replace(valid=torch.zeros(B, 3, dtype=torch.bool), k=read.k.requires_grad_(), v=read.v.requires_grad_())
    q.requires_grad_()
    rotary = Rotary(D)
    out = attend(q, k, v, read, rotary, 0)
    torch.testing.assert_close(out, attend_reference(q, k, v, read, rotary, 0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out, attend(q, k, v, Read(), rotary, 0), rtol=0, atol=0)
    out.sum().backward()
    assert read.k.grad is None and read.v.grad is None


def test_all_memory_masked_rows_have_no_nan_and_zero_memory_gradient():
    q, k, v, read = tensors(torch.Generator().manual_seed(4), 4, 0, 3)
    read = read._replace(k=read.k.requires_grad_(), v=read.v.requires_grad_())
    out = attend(q, k, v, read, Rotary(D), 0)
    out.sum().backward()
    assert torch.isfinite(out).all()
    assert (read.k.grad[1] == 0).all() and (read.v.grad[1] == 0).all() and read.v.grad[0].abs().sum() > 0


def test_bf16_autocast_close_to_fp32():
    q, k, v, read = tensors(torch.Generator().manual_seed(5), 16, 0, 4, positions=True)
    rotary = Rotary(D)
    want = attend_reference(q, k, v, read, rotary, 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = attend(q.bfloat16(), k.bfloat16(), v.bfloat16(), read, rotary, 0)
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=0, atol=3e-2)


def test_invalid_memory_rows_equal_local_attention():
    q, k, v, read = tensors(torch.Generator().manual_seed(0), 5, 0, 4)
    rotary = Rotary(D)
    out = attend_reference(q, k, v, read, rotary, 0)
    local = attend_reference(q, k, v, Read(), rotary, 0)
    torch.testing.assert_close(out[1], local[1])
    assert not torch.allclose(out[0], local[0])


@pytest.mark.parametrize("positions", [False, True])
def test_no_validity_mask_means_every_memory_key_is_valid(positions):
    """Read.valid=None (what Elastic Memory returns when every row has a history) is an all-True mask,
    in the fast path and the reference, with the memory mass visibly present."""
    q, k, v, read = tensors(torch.Generator().manual_seed(4), 6, 0, 5, positions)
    rotary = Rotary(D)
    every = read._replace(valid=torch.ones(B, 5, dtype=torch.bool))
    none = read._replace(valid=None)
    want = attend_reference(q, k, v, every, rotary, 0)
    torch.testing.assert_close(attend_reference(q, k, v, none, rotary, 0), want, rtol=0, atol=0)
    torch.testing.assert_close(attend(q, k, v, none, rotary, 0), want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(want, attend_reference(q, k, v, Read(), rotary, 0))


def test_memory_logits_use_unrotated_query():
    """One query, one local key equal to it, one memory key: weights from the closed form."""
    rotary = Rotary(D)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 1, D, generator=gen)
    k_mem = torch.randn(1, 1, 1, D, generator=gen)
    v = torch.zeros(1, 1, 1, D)
    v_mem = torch.ones(1, 1, 1, D)
    read = Read(k=k_mem, v=v_mem, valid=torch.ones(1, 1, dtype=torch.bool))
    start = 5  # query at position 5, the local key (the query itself) at 0: RoPE changes their dot product
    k = torch.cat([q, torch.zeros(1, 1, start, D)], dim=2)[:, :, : start + 1]
    local = (rotary(q, start) * rotary(k, 0)[:, :, :1]).sum() / math.sqrt(D)
    mem = (q * k_mem).sum() / math.sqrt(D)
    logits = torch.cat([mem.view(1), local.view(1), torch.zeros(start)])  # the 5 zero keys give logit 0
    expected = torch.softmax(logits, 0)[0]  # weight on the memory value (ones); others are zeros
    out = attend(q, k, torch.zeros(1, 1, start + 1, D), read, rotary, start)
    torch.testing.assert_close(out, torch.full_like(out, expected.item()))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("positions", [False, True])
def test_cuda_fast_path_equals_reference(dtype, positions):
    """On CUDA: flash (bf16) or the unfused twin (fp32), value and gradients against the fp32 reference."""
    gen = torch.Generator().manual_seed(7)
    q, k, v, read = tensors(gen, 128, 0, 16, positions)
    q, k, v = (x.cuda().requires_grad_() for x in (q, k, v))
    read = read._replace(k=read.k.cuda(), v=read.v.cuda(), valid=read.valid.cuda(),
                         pos=None if read.pos is None else read.pos.cuda())
    rotary = Rotary(D).cuda()
    weights = torch.randn(B, H, 128, D, generator=gen).cuda()
    results = []
    for fn, cast in ((attend, dtype), (attend_reference, torch.float32)):
        for x in (q, k, v):
            x.grad = None
        out = fn(q.to(cast), k.to(cast), v.to(cast), read, rotary, 0)
        (out.float() * weights).sum().backward()
        results.append([out.float().detach()] + [x.grad.clone() for x in (q, k, v)])
    tol = 5e-2 if dtype == torch.bfloat16 else 1e-4
    for fast, ref in zip(*results):
        torch.testing.assert_close(fast, ref, rtol=tol, atol=tol)


@pytest.mark.gpu
def test_cuda_compiled_decoder_equals_eager_with_elastic_memory():
    """torch.compile of a small Elastic Memory decoder on CUDA (bf16): the losses and gradients
    of three segments match eager (the fused attention and the bank build under the compiler)."""
    import torch.nn.functional as F

    from elastic_cli.memory import REGISTRY
    from elastic_cli.model.decoder import Decoder, DecoderShape
    from elastic_cli.model.init import init_weights

    model = Decoder(DecoderShape(97, 64, 2, 2, 128, 32), {i: REGISTRY["elastic"](2, 32, order=8, samples=8) for i in (0, 1)})
    init_weights(model, seed=0)
    model = model.cuda()
    x = torch.randint(0, 97, (2, 3, 32), generator=torch.Generator().manual_seed(0)).cuda()
    results = []
    for forward in (torch.compile(model), model):
        model.zero_grad()
        states, loss = model.empty_states(2, "cuda"), 0
        with torch.autocast("cuda", dtype=torch.bfloat16):
            for s in range(3):
                logits, states = forward(x[:, s], states)
                loss = loss + F.cross_entropy(logits.float().flatten(0, 1), x[:, s].flatten())
        loss.backward()
        results.append([loss.detach()] + [p.grad.clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=2e-2, atol=2e-2)
