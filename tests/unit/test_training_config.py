"""TrainingConfig refuses settings that cannot train; the trainer module imports without torch."""

from __future__ import annotations

from typing import Any

import pytest

from agent.training.lora_training import TrainingConfig


def test_defaults_are_valid_and_frozen() -> None:
    config = TrainingConfig()
    assert config.targets == ("q_proj", "v_proj")
    assert not config.freeze_a
    with pytest.raises(AttributeError):
        config.rank = 2  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"rank": 0}, "rank must be >= 1"),
        ({"alpha": 0}, "alpha must be >= 1"),
        ({"targets": ()}, "targets must be a non-empty subset"),
        ({"targets": ("q_proj", "lm_head")}, "targets must be a non-empty subset"),
        ({"targets": ("q_proj", "q_proj")}, "targets repeat a module"),
        ({"local_steps": 0}, "local_steps must be >= 1"),
        ({"batch_size": 0}, "batch_size must be >= 1"),
        ({"threads": 0}, "threads must be >= 1"),
        ({"max_seq_len": 1}, "max_seq_len must be >= 2"),
        ({"learning_rate": 0.0}, "learning_rate must be a positive number"),
        ({"learning_rate": float("nan")}, "learning_rate must be a positive number"),
    ],
)
def test_unusable_settings_are_refused(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        TrainingConfig(**change)
