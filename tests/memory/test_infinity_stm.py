"""∞-former's short-term memory (`memory.stm`): a detached Transformer-XL cache beside the long-term
memory. With the long-term read switched off it is exactly `xl` with the same cache."""
import pytest
import torch

from elastic_cli.config import load_config
from elastic_cli.errors import UsageError
from elastic_cli.memory import REGISTRY
from elastic_cli.memory.base import SegmentView
from elastic_cli.memory.infinity import InfinityMemory
from tests.helpers.memory_checks import D, HEADS, SEG, build, by_segments, check_rows_and_reset, check_streaming, tokens

DH = D // HEADS


def seg_of(gen, b=2, l=4):
    q, k, v = (torch.randn(b, HEADS, l, DH, generator=gen, requires_grad=True) for _ in range(3))
    return SegmentView(torch.randn(b, l, D, generator=gen), q, k, v)


def test_cache_keeps_the_last_tokens_detached_at_positions_before_the_segment():
    gen = torch.Generator().manual_seed(0)
    mem = InfinityMemory(HEADS, DH, basis=8, resample=12, stm=6)
    s1, s2 = seg_of(gen), seg_of(gen)
    state = mem.write(mem.write(mem.empty(2, "cpu"), s1), s2)
    torch.testing.assert_close(state.sk, torch.cat([s1.k, s2.k], dim=2)[:, :, -6:].detach())  # the last 6 of 8
    torch.testing.assert_close(state.sv, torch.cat([s1.v, s2.v], dim=2)[:, :, -6:].detach())
    assert not state.sk.requires_grad and not state.sv.requires_grad  # stop-gradient, as Transformer-XL
    one = mem.write(mem.empty(2, "cpu"), s1)
    read = mem.read(one, seg_of(gen))
    assert read.pos.tolist() == list(range(-6, 0))
    assert read.valid.tolist() == [[False, False, True, True, True, True]] * 2  # 4 of 6 written
    assert read.out is not None and mem.read(mem.empty(2, "cpu"), seg_of(gen)).valid.sum() == 0
    assert mem.numel(state) == 8 * D + 1 + 2 * 6 * D


def test_without_the_long_term_read_it_is_xl_with_the_same_cache():
    inf = build("infinity", basis=8, resample=12, stm=9)
    xl = build("xl", cache=9)
    with torch.no_grad():
        xl.load_state_dict({k: v for k, v in inf.state_dict().items() if ".memory." not in k})
        for i in inf.memory_layers:
            inf.blocks[i].memory.wo.weight.zero_()  # the long-term memory adds 0
        toks = tokens(2, 4 * SEG, seed=3)
        torch.testing.assert_close(by_segments(inf, toks)[0], by_segments(xl, toks)[0], rtol=0, atol=1e-6)


def test_decoder_streaming_rows_reset():
    model = build("infinity", basis=8, resample=12, stm=5, boost=10.0)
    check_streaming(model, atol=2e-5)
    check_rows_and_reset(model, atol=2e-5)


def test_caching_refuses_a_base_with_a_short_term_cache():
    with pytest.raises(ValueError, match="cannot be cached"):
        REGISTRY["caching"](HEADS, DH, base="infinity", aggregate="gated", basis=8, stm=4)
    with pytest.raises(UsageError, match="memory.stm=4"):
        load_config("recipes/tiny.yaml", ["memory.kind=caching", "memory.base=infinity", "memory.stm=4"])
    assert load_config("recipes/tiny.yaml", ["memory.kind=infinity", "memory.stm=4"]).memory.stm == 4
