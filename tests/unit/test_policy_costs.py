"""Request costs on policy targets: exact nano-units, rounded up once, hostile figures refused."""

from __future__ import annotations

import math
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from common.policy.costs import (
    MAX_TOKENS,
    NANOS_PER_UNIT,
    CloudPrice,
    CostTable,
    busy_micros,
    check_nanos,
    cloud_cost,
    exact_amount,
    nanos_to_decimal,
    on_premises_cost,
    to_nanos,
)
from common.policy.document import load_policy
from common.policy.policy_model import CloudTarget, LocalTarget, Policy, SiteAgentTarget

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "routing-policy.yaml"


@pytest.fixture(scope="module")
def policy() -> Policy:
    return load_policy(EXAMPLE)


@pytest.fixture(scope="module")
def table(policy: Policy) -> CostTable:
    return CostTable(policy)


def cloud(price_in: float, price_out: float) -> CloudTarget:
    return CloudTarget(
        name="c",
        model="m",
        max_level="internal",
        base_url="https://example.com/v1",
        price_per_1k_input=price_in,
        price_per_1k_output=price_out,
    )


def test_cloud_cost_is_price_per_thousand_tokens_in_and_out(table: CostTable) -> None:
    # cloud-mini: 0.00015 in, 0.0006 out per 1k; cloud-large: 0.003 in, 0.015 out per 1k
    assert table.request_cost(
        "cloud-mini", prompt_tokens=1000, completion_tokens=500, busy_seconds=3.0
    ) == (150_000 + 300_000)
    assert table.request_cost(
        "cloud-large", prompt_tokens=1000, completion_tokens=500, busy_seconds=0
    ) == (3_000_000 + 7_500_000)
    assert (
        table.request_cost("cloud-mini", prompt_tokens=1, completion_tokens=0, busy_seconds=0)
        == 150
    )


def test_on_premises_cost_is_node_plus_power_per_hour_of_the_model_busy(table: CostTable) -> None:
    # local-smol: 0.10/h + 65 W × 0.30/kWh = 0.1195/h; site-big: 0.90 + 0.45 kW × 0.30 = 1.035/h
    hour = table.request_cost("local-smol", prompt_tokens=9, completion_tokens=9, busy_seconds=3600)
    assert hour == 119_500_000
    one_second = table.request_cost(
        "local-smol", prompt_tokens=0, completion_tokens=0, busy_seconds=1
    )
    assert one_second == math.ceil(Fraction(119_500_000, 3600)) == 33_195
    minute = table.request_cost("site-big", prompt_tokens=0, completion_tokens=0, busy_seconds=60)
    assert minute == 17_250_000
    assert table.request_cost("site-big", prompt_tokens=0, completion_tokens=0, busy_seconds=0) == 0


def test_costs_round_up_once_to_the_next_nano_unit() -> None:
    tiny = cloud(0.0000001, 0.0)  # 10^-10 per token: a tenth of a nano-unit
    assert cloud_cost(tiny, 1, 0) == 1
    assert cloud_cost(tiny, 10, 0) == 1
    assert cloud_cost(tiny, 11, 0) == 2
    node = LocalTarget(name="n", model="m", max_level="restricted", cost_per_hour=0.0036)
    assert on_premises_cost(node, 1.0) == 1_000  # 0.0036 / 3600 s = 10^-6 exactly
    assert on_premises_cost(node, 0.0000001) == 1  # 10^-13, rounded up to one nano-unit


def test_prices_are_read_as_the_decimals_the_policy_spells() -> None:
    assert exact_amount(0.1) == Fraction(1, 10)
    assert to_nanos(0.1) == 100_000_000
    assert to_nanos("0.000000001") == 1
    assert to_nanos("0.0000000019") == 1  # a limit is rounded down, never raised
    assert to_nanos(1e9) == 10**18
    assert nanos_to_decimal(150) == Decimal("0.000000150")
    # a float sum drifts; nano-units do not
    assert sum([0.00000015] * 100_000) != 0.015
    price = CloudPrice.of(cloud(0.00015, 0.0))
    total = sum(price.cost(1, 0) for _ in range(100_000))
    assert nanos_to_decimal(total) == Decimal("0.015")


def test_the_estimate_of_a_reservation_is_the_most_a_request_can_cost(table: CostTable) -> None:
    assert table.reservation_estimate("cloud-mini", prompt_tokens=100, max_tokens=200) == (
        100 * 150 + 200 * 600
    )
    # local-smol: its whole timeout (60 s default) at 0.1195/h
    assert table.reservation_estimate("local-smol", prompt_tokens=100, max_tokens=200) == (
        math.ceil(Fraction(119_500_000, 60))
    )
    actual = table.request_cost(
        "local-smol", prompt_tokens=100, completion_tokens=200, busy_seconds=12.5
    )
    assert actual < table.reservation_estimate("local-smol", prompt_tokens=100, max_tokens=200)


def test_what_the_traffic_would_have_cost_on_each_cloud_provider(table: CostTable) -> None:
    assert table.cloud_targets == ("cloud-large", "cloud-mini")
    assert table.cloud_equivalents(1000, 500) == {
        "cloud-large": 10_500_000,
        "cloud-mini": 450_000,
    }
    assert table.cloud_equivalents(0, 0) == {"cloud-large": 0, "cloud-mini": 0}


def test_site_agent_targets_are_costed_like_local_ones() -> None:
    site = SiteAgentTarget(
        name="s",
        model="m",
        max_level="internal",
        agent="a",
        power_watts=1000,
        energy_price_per_kwh=0.25,
    )
    assert on_premises_cost(site, 3600) == 250_000_000


@pytest.mark.parametrize(
    "tokens",
    [-1, MAX_TOKENS + 1, 10**30, 1.5, float("nan"), True, "12", None],
)
def test_hostile_token_counts_are_refused(table: CostTable, tokens: object) -> None:
    with pytest.raises(ValueError, match="tokens"):
        table.request_cost(
            "cloud-mini",
            prompt_tokens=tokens,  # type: ignore[arg-type]
            completion_tokens=0,
            busy_seconds=0,
        )
    with pytest.raises(ValueError, match="tokens"):
        table.cloud_equivalents(0, tokens)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "seconds", [-0.001, float("nan"), float("inf"), 86_400.001, 10**30, True, "1", None]
)
def test_hostile_busy_times_are_refused(table: CostTable, seconds: object) -> None:
    with pytest.raises(ValueError, match="busy seconds"):
        table.request_cost(
            "local-smol",
            prompt_tokens=0,
            completion_tokens=0,
            busy_seconds=seconds,  # type: ignore[arg-type]
        )


@pytest.mark.parametrize(
    "amount",
    ["nan", "inf", "-0.1", -1, Decimal("1e999999"), "1e-999999", "12abc", "", True, object()],
)
def test_hostile_amounts_are_refused(amount: object) -> None:
    with pytest.raises(ValueError, match="amount"):
        exact_amount(amount)  # type: ignore[arg-type]


@pytest.mark.parametrize("nanos", [-1, 10**40, 1.0, float("nan"), False, "5"])
def test_hostile_costs_in_nano_units_are_refused(nanos: object) -> None:
    with pytest.raises(ValueError, match="cost"):
        check_nanos(nanos)


def test_an_unknown_target_is_refused(table: CostTable) -> None:
    with pytest.raises(ValueError, match="not in the policy"):
        table.request_cost("nowhere", prompt_tokens=1, completion_tokens=1, busy_seconds=1)


def test_a_target_with_a_non_finite_price_is_refused() -> None:
    with pytest.raises(ValueError, match="price_per_1k_input"):
        cloud_cost(cloud(float("nan"), 0.0), 1, 1)


def test_busy_time_counts_in_whole_microseconds_rounded_up() -> None:
    assert busy_micros(1.5) == 1_500_000
    assert busy_micros(0.0000001) == 1
    assert busy_micros(0) == 0


_prices = st.decimals(min_value=0, max_value=1000, places=9, allow_nan=False).map(str)


@given(_prices, _prices, st.integers(0, MAX_TOKENS), st.integers(0, MAX_TOKENS))
def test_a_cloud_cost_is_the_exact_cost_rounded_up(
    price_in: str, price_out: str, prompt: int, completion: int
) -> None:
    target = cloud(float(price_in), float(price_out))
    exact = (
        (Fraction(Decimal(repr(float(price_in)))) * prompt)
        + (Fraction(Decimal(repr(float(price_out)))) * completion)
    ) * Fraction(NANOS_PER_UNIT, 1000)
    assert 0 <= cloud_cost(target, prompt, completion) - exact < 1
