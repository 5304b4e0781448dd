"""`check_task` matches whole values: a trailing newline is no part of a UUID or a dataset
name (`re.match` with `$` lets one through)."""

from __future__ import annotations

import dataclasses

import pytest

from agent.federated.supernodes import TaskError, check_task
from tests.unit.test_supernodes import JOB, TASK


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"job_id": JOB + "\n"}, "is not a UUID"),
        ({"dataset": "support\n"}, "is not allowed"),
        ({"base_sha256": TASK.base_sha256 + "\n"}, "sha256 is not 64 lowercase hex digits"),
    ],
    ids=["job-id", "dataset", "sha256"],
)
def test_a_trailing_newline_is_refused(change: dict[str, str], reason: str) -> None:
    with pytest.raises(TaskError, match=reason):
        check_task(dataclasses.replace(TASK, **change))  # type: ignore[arg-type]
