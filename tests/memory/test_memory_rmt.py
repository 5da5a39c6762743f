"""RMT: memory tokens around each segment, last-layer states carried; decoder checks."""
import pytest
import torch

from elastic_cli.memory import REGISTRY
from tests.helpers.memory_checks import (D, HEADS, SEG, build, by_segments, check_rows_and_reset, check_streaming,
                           check_training, tokens)


def test_zero_memory_tokens_equal_none():
    rmt, none = build("rmt", layers=(0,), tokens=0), build("none", layers=(0,))
    missing, unexpected = rmt.load_state_dict(none.state_dict(), strict=False)
    assert missing == ["blocks.0.memory.initial"] and not unexpected
    toks = tokens(2, 3 * SEG, seed=5)
    with torch.no_grad():
        torch.testing.assert_close(by_segments(rmt, toks)[0], by_segments(none, toks)[0], rtol=0, atol=0)
    assert (rmt.front, rmt.back) == (0, 0) and rmt.numel(rmt.empty_states(1, "cpu")) == 0


def test_memory_is_the_last_hidden_state_at_the_write_slots():
    model = build("rmt", layers=(0,), tokens=3)
    toks = tokens(2, SEG, seed=6)
    with torch.no_grad():
        _, states = model(toks, model.empty_states(2, "cpu"))
        # the stream written out by hand: [M0 ; tokens ; M0] through the blocks, then the final norm
        m0 = model.blocks[0].memory.initial.expand(2, -1, -1)
        x = torch.cat([m0, model.embed(toks), m0], dim=1)
        for blk in model.blocks:
            blk.memory = None
            x, *_ = blk(x, None, None, None)
        expected = model.norm(x)[:, -3:]
    torch.testing.assert_close(states[0].m, expected)
    assert states[0].t.tolist() == [1, 1]


def test_first_segment_reads_the_learned_initial_memory():
    model = build("rmt", layers=(0,), tokens=2, boost=10.0)
    toks = tokens(1, SEG, seed=7)
    with torch.no_grad():
        a = model(toks, model.empty_states(1, "cpu"))[0]
        model.blocks[0].memory.initial.add_(1.0)
        b = model(toks, model.empty_states(1, "cpu"))[0]
    assert (a - b).abs().max() > 1e-3


def test_decoder_streaming_rows_reset_and_numel():
    model = build("rmt", layers=(0,), tokens=2, boost=10.0)
    assert (model.front, model.back) == (2, 2)
    assert model.numel(model.empty_states(1, "cpu")) == 2 * D
    check_streaming(model)
    check_rows_and_reset(model)


def test_training_steps_reduce_loss_with_gradient_through_memory():
    torch.manual_seed(0)
    check_training(build("rmt", layers=(0,), tokens=2))


def test_bad_options_are_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        REGISTRY["rmt"](HEADS, D // HEADS, tokens=-1)
