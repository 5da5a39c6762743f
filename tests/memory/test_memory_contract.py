"""The memory contract, checked for every REGISTRY kind on a tiny decoder (contract_checks.py): batch
rows independent, segments equal streaming (teacher forcing), reset at document start, numel = floats
of the state, fast attention equals the reference path, and a few Adam steps lower the loss."""
import pytest
import torch

from tests.helpers import contract_checks
from tests.helpers.contract_checks import KINDS, build
from tests.helpers.memory_checks import SEG, by_segments, by_steps, tokens


@pytest.mark.parametrize("check", contract_checks.CHECKS, ids=lambda check: check.__name__)
@pytest.mark.parametrize("kind", KINDS)
def test_memory_contract(kind, check):
    """Each check of tests/helpers/contract_checks.py (CHECKS) on each kind."""
    check(kind)


@pytest.mark.gpu
@pytest.mark.parametrize("kind", KINDS)
def test_cuda_streaming_equals_segments(kind):
    model = build(kind).cuda()
    toks = tokens(2, 3 * SEG + 2, seed=11).cuda()
    with torch.no_grad():
        expected, _ = by_segments(model, toks, model.empty_states(2, "cuda"))
        steps, _ = by_steps(model, toks, "cuda")
    torch.testing.assert_close(steps, expected, rtol=0, atol=1e-4)
