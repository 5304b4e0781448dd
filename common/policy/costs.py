"""What a request costs on a policy target, in integer nano-units of the prices' currency."""

# Money is an `int` of nano-units (10^-9 of the currency the policy's prices are written in):
# sums over millions of requests stay exact, a cost of a single token on the cheapest cloud
# price still has three significant digits, and a month of 10^9 in spend (the document's
# largest amount) fits a 64-bit SQL integer. Prices and rates are read as the decimal the
# policy spells (`0.00015` is exactly 15/100000, never its binary float), so the formulas
# below are exact fractions; each request's cost is rounded UP to the next nano-unit, once:
# spend is never under-counted, and over-counted by less than one nano-unit per request.
#
# cloud target:   cost = price_per_1k_input  × prompt_tokens / 1000
#                      + price_per_1k_output × completion_tokens / 1000
# local and site_agent targets, per hour of the model busy:
#                 rate = cost_per_hour + power_watts / 1000 × energy_price_per_kwh
#                 cost = rate × busy_seconds / 3600
# `busy_seconds` is the time the request kept the model busy (the caller measures it; a model
# serving several streams at once shares its hour between them, so pass each request's share).
# It is counted in whole microseconds.

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from common.policy.policy_model import CloudTarget, LocalTarget, Policy, SiteAgentTarget, Target

NANOS_PER_UNIT = 10**9
MAX_TOKENS = 10**9  # per request, per count: more is not a request, it is an error
MAX_BUSY_SECONDS = 86_400.0  # no request keeps a model busy for more than a day
MAX_AMOUNT = 10**12  # of currency; the policy document allows 10^9
MAX_DECIMALS = 30  # places after the point of an amount (Decimal("1e-999999") is hostile)
MAX_NANOS = MAX_AMOUNT * NANOS_PER_UNIT
_MICROS_PER_SECOND = 10**6


def exact_amount(value: float | int | Decimal | str, what: str = "amount") -> Fraction:
    """`value` as an exact fraction: a float by the decimal it prints as (0.1 is 1/10).
    ValueError for NaN, infinities, negatives, more than MAX_AMOUNT or MAX_DECIMALS places,
    booleans and what is not a number."""
    if isinstance(value, bool) or not isinstance(value, float | int | Decimal | str):
        raise ValueError(f"{what} must be a number, not {type(value).__name__}")
    try:
        decimal = Decimal(repr(value)) if isinstance(value, float) else Decimal(value)
    except (InvalidOperation, ValueError):
        raise ValueError(f"{what} must be a number, not {str(value)[:40]!r}") from None
    if not decimal.is_finite():
        raise ValueError(f"{what} must be finite, not {decimal}")
    if not 0 <= decimal <= MAX_AMOUNT:
        raise ValueError(f"{what} must be 0..{MAX_AMOUNT:g}, not {str(decimal)[:40]}")
    exponent = decimal.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMALS:
        raise ValueError(f"{what} has more than {MAX_DECIMALS} decimal places")
    return Fraction(decimal)


def to_nanos(value: float | int | Decimal | str, what: str = "amount") -> int:
    """An amount of currency in nano-units, rounded down (a limit is never raised by rounding)."""
    return math.floor(exact_amount(value, what) * NANOS_PER_UNIT)


def nanos_to_decimal(nanos: int) -> Decimal:
    """Nano-units back to an exact Decimal amount of currency (for reports and JSON)."""
    return Decimal(nanos).scaleb(-9)


def check_tokens(value: object, what: str = "tokens") -> int:
    """A token count: an int 0..MAX_TOKENS, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be a whole number, not {type(value).__name__}")
    if not 0 <= value <= MAX_TOKENS:
        raise ValueError(f"{what} must be 0..{MAX_TOKENS}, not {str(value)[:40]}")
    return value


def check_nanos(value: object, what: str = "cost") -> int:
    """A cost in nano-units: an int 0..MAX_NANOS, else ValueError."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{what} must be whole nano-units (int), not {type(value).__name__}")
    if not 0 <= value <= MAX_NANOS:
        raise ValueError(f"{what} must be 0..{MAX_NANOS} nano-units, not {str(value)[:40]}")
    return value


def busy_micros(seconds: object) -> int:
    """Seconds of the model busy, as whole microseconds (rounded up); ValueError when not a
    finite number 0..MAX_BUSY_SECONDS."""
    if isinstance(seconds, bool) or not isinstance(seconds, float | int):
        raise ValueError(f"busy seconds must be a number, not {type(seconds).__name__}")
    if not math.isfinite(seconds) or not 0 <= seconds <= MAX_BUSY_SECONDS:
        raise ValueError(f"busy seconds must be 0..{MAX_BUSY_SECONDS:g}, not {seconds!r:.40}")
    return math.ceil(exact_amount(seconds, "busy seconds") * _MICROS_PER_SECOND)


def _ceil_div(numerator: int, denominator: int) -> int:
    return -(-numerator // denominator)


@dataclass(frozen=True, slots=True)
class CloudPrice:
    """A cloud target's prices as integers over one denominator: input and output per token,
    in nano-units, are `per_input / denominator` and `per_output / denominator`."""

    per_input: int
    per_output: int
    denominator: int

    @classmethod
    def of(cls, target: CloudTarget) -> CloudPrice:
        per_input = exact_amount(target.price_per_1k_input, "price_per_1k_input")
        per_output = exact_amount(target.price_per_1k_output, "price_per_1k_output")
        per_input *= Fraction(NANOS_PER_UNIT, 1000)
        per_output *= Fraction(NANOS_PER_UNIT, 1000)
        denominator = math.lcm(per_input.denominator, per_output.denominator)
        return cls(int(per_input * denominator), int(per_output * denominator), denominator)

    def cost(self, prompt_tokens: int, completion_tokens: int) -> int:
        prompt = check_tokens(prompt_tokens, "prompt tokens")
        completion = check_tokens(completion_tokens, "completion tokens")
        return _ceil_div(self.per_input * prompt + self.per_output * completion, self.denominator)


@dataclass(frozen=True, slots=True)
class HourlyRate:
    """An on-premises target's running cost per hour (node plus power), in nano-units, as
    `numerator / denominator`."""

    numerator: int
    denominator: int

    @classmethod
    def of(cls, target: LocalTarget | SiteAgentTarget) -> HourlyRate:
        node = exact_amount(target.cost_per_hour, "cost_per_hour")
        watts = exact_amount(target.power_watts, "power_watts")
        energy = exact_amount(target.energy_price_per_kwh, "energy_price_per_kwh")
        rate = (node + watts / 1000 * energy) * NANOS_PER_UNIT
        return cls(rate.numerator, rate.denominator)

    def cost(self, busy_seconds: float) -> int:
        micros = busy_micros(busy_seconds)
        return _ceil_div(self.numerator * micros, self.denominator * 3600 * _MICROS_PER_SECOND)


def cloud_cost(target: CloudTarget, prompt_tokens: int, completion_tokens: int) -> int:
    """Nano-units a cloud target charges for the tokens."""
    return CloudPrice.of(target).cost(prompt_tokens, completion_tokens)


def on_premises_cost(target: LocalTarget | SiteAgentTarget, busy_seconds: float) -> int:
    """Nano-units of node and power cost for `busy_seconds` of the target's model."""
    return HourlyRate.of(target).cost(busy_seconds)


class CostTable:
    """The prices of one policy's targets, read once: costs per request, estimates for budget
    reservations, and what traffic would have cost on each cloud provider."""

    def __init__(self, policy: Policy) -> None:
        self._targets: dict[str, Target] = {t.name: t for t in policy.targets}
        self._cloud: dict[str, CloudPrice] = {}
        self._hourly: dict[str, HourlyRate] = {}
        for target in policy.targets:
            if isinstance(target, CloudTarget):
                self._cloud[target.name] = CloudPrice.of(target)
            else:
                self._hourly[target.name] = HourlyRate.of(target)

    @property
    def cloud_targets(self) -> tuple[str, ...]:
        return tuple(self._cloud)

    def request_cost(
        self, target: str, *, prompt_tokens: int, completion_tokens: int, busy_seconds: float
    ) -> int:
        """What one finished (or failed) request cost on `target`, in nano-units: a cloud
        target by its tokens, an on-premises one by its busy time (both are checked)."""
        check_tokens(prompt_tokens, "prompt tokens")
        check_tokens(completion_tokens, "completion tokens")
        busy_micros(busy_seconds)
        if target in self._cloud:
            return self._cloud[target].cost(prompt_tokens, completion_tokens)
        return self._rate(target).cost(busy_seconds)

    def reservation_estimate(self, target: str, *, prompt_tokens: int, max_tokens: int) -> int:
        """The most a request can cost on `target`: a cloud target with `max_tokens` of
        completion; an on-premises one busy for the target's whole `timeout_s`."""
        if target in self._cloud:
            return self._cloud[target].cost(prompt_tokens, max_tokens)
        check_tokens(prompt_tokens, "prompt tokens")
        check_tokens(max_tokens, "max tokens")
        return self._rate(target).cost(self._targets[target].timeout_s)

    def cloud_equivalents(self, prompt_tokens: int, completion_tokens: int) -> Mapping[str, int]:
        """What these tokens would have cost on each cloud target of the policy, by name."""
        return {
            name: price.cost(prompt_tokens, completion_tokens)
            for name, price in self._cloud.items()
        }

    def _rate(self, target: str) -> HourlyRate:
        try:
            return self._hourly[target]
        except KeyError:
            raise ValueError(f"target {target[:64]!r} is not in the policy") from None
