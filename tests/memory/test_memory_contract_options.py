"""The memory contract (contract_checks.py) for the options that change a kind's state or read
(contract_checks.VARIANTS: ARMT's raw features, the ∞-former's short-term cache, the Memorizing
Transformer's XL cache, MELODI without summary tokens, Memory Caching's soup over ARMT)."""
import pytest

from tests.helpers.contract_checks import CHECKS, VARIANTS


@pytest.mark.parametrize("check", CHECKS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_contract(variant, check):
    check(variant)
