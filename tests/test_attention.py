"""Attention: SDPA fast path equals the explicit reference; the joint softmax closed forms."""
import math

import pytest
import torch

from elastic_cli.memory.base import Read
from elastic_cli.model.attention import attend, attend_reference
from elastic_cli.model.layers import Rotary

B, H, D = 3, 2, 8


def tensors(gen, n, start, m):
    q = torch.randn(B, H, n, D, generator=gen)
    k = torch.randn(B, H, start + n, D, generator=gen)
    v = torch.randn(B, H, start + n, D, generator=gen)
    if m == 0:
        return q, k, v, Read()
    read = Read(k=torch.randn(B, H, m, D, generator=gen), v=torch.randn(B, H, m, D, generator=gen),
                valid=torch.tensor([[True] * m, [False] * m, [True] * m]))
    return q, k, v, read


@pytest.mark.parametrize("n,start,m", [(6, 0, 0), (6, 0, 5), (1, 9, 0), (1, 9, 4), (3, 4, 4)])
def test_fast_equals_reference(n, start, m):
    q, k, v, read = tensors(torch.Generator().manual_seed(n + start + m), n, start, m)
    rotary = Rotary(D)
    torch.testing.assert_close(attend(q, k, v, read, rotary, start), attend_reference(q, k, v, read, rotary, start),
                               rtol=1e-5, atol=1e-6)


def test_invalid_memory_rows_equal_local_attention():
    q, k, v, read = tensors(torch.Generator().manual_seed(0), 5, 0, 4)
    rotary = Rotary(D)
    out = attend_reference(q, k, v, read, rotary, 0)
    local = attend_reference(q, k, v, Read(), rotary, 0)
    torch.testing.assert_close(out[1], local[1])
    assert not torch.allclose(out[0], local[0])


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
