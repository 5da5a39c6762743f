"""The memory contract, checked for every REGISTRY kind on a tiny decoder (contract_checks.py): batch
rows independent, segments equal streaming (teacher forcing), reset at document start, numel = floats
of the state, fast attention equals the reference path, and a few Adam steps lower the loss."""
import pytest
import torch

from tests.helpers import contract_checks
from tests.helpers.contract_checks import KINDS, build
from tests.helpers.memory_checks import SEG, by_segments, by_steps, tokens


@pytest.mark.parametrize("kind", KINDS)
def test_batch_rows_are_independent(kind):
    contract_checks.batch_rows_are_independent(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_segments_equal_streaming_generation(kind):
    contract_checks.segments_equal_streaming_generation(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_reset_at_document_start(kind):
    contract_checks.reset_at_document_start(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_numel_counts_the_floats_of_the_state(kind):
    contract_checks.numel_counts_the_floats_of_the_state(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_fast_attention_equals_reference(kind):
    contract_checks.fast_attention_equals_reference(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_a_few_adam_steps_lower_the_loss(kind):
    contract_checks.a_few_adam_steps_lower_the_loss(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_bf16_autocast_keeps_float_states_fp32(kind):
    contract_checks.bf16_autocast_keeps_float_states_fp32(kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_streaming_equals_segments(kind):
    model = build(kind).cuda()
    toks = tokens(2, 3 * SEG + 2, seed=11).cuda()
    with torch.no_grad():
        expected, _ = by_segments(model, toks, model.empty_states(2, "cuda"))
        steps, _ = by_steps(model, toks, "cuda")
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-4)
