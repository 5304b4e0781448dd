"""Why the control plane refuses telemetry: the reasons it counts, and each metric's reason."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from common.errors import InvalidArgument
from common.telemetry import METRICS, Metric, validate_metric

# Reasons counted in IngestResult.rejected.
BATCH_TOO_LARGE = "batch too large"
BAD_SEQUENCE_NUMBER = "bad sequence number"
SAMPLE_FROM_THE_FUTURE = "sample from the future"
SAMPLE_TOO_OLD = "sample too old"
TOO_MANY_METRICS = "too many metrics"
UNKNOWN_METRIC = "unknown metric"
VALUE_NOT_A_NUMBER = "value not a number"
VALUE_NOT_FINITE = "value not finite"
VALUE_OUT_OF_RANGE = "value out of range"
WRONG_LABELS = "wrong labels"
INVALID_METRIC = "invalid metric"  # anything else validate_metric refuses


def reject_reason(metric: Metric) -> str | None:
    """The category of what `validate_metric` refuses (None when it accepts the metric)."""
    if validate_metric(metric) is None:
        return None
    spec = METRICS.get(metric.name)
    if spec is None:
        return UNKNOWN_METRIC
    value = metric.value
    if isinstance(value, bool) or not isinstance(value, int | float):
        return VALUE_NOT_A_NUMBER
    if not math.isfinite(value):
        return VALUE_NOT_FINITE
    if not spec.minimum <= value <= spec.maximum:
        return VALUE_OUT_OF_RANGE
    if set(metric.labels) != set(spec.labels) or not all(
        isinstance(v, str) for v in metric.labels.values()
    ):
        return WRONG_LABELS
    return INVALID_METRIC


def aware_utc(moment: datetime, what: str) -> datetime:
    """A time argument, which must carry its time zone, in UTC."""
    if not isinstance(moment, datetime) or moment.tzinfo is None:
        raise InvalidArgument(f"{what} must be a timezone-aware datetime")
    return moment.astimezone(UTC)
