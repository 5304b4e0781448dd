"""training_unavailable_reason: None with the train extra, one clear line without it."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from importlib.machinery import ModuleSpec

import pytest

from agent.training import capability


def test_available_when_every_module_is_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    looked_up: list[str] = []
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None) -> ModuleSpec | None:
        looked_up.append(name)
        return real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    assert capability.training_unavailable_reason() is None
    assert looked_up == ["torch", "transformers", "peft", "flwr"]
    assert capability.training_capability() == "federated-training"


@pytest.mark.parametrize("missing", ["torch", "transformers", "peft", "flwr"])
def test_a_missing_module_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    real = importlib.util.find_spec

    def fake(name: str, package: str | None = None) -> ModuleSpec | None:
        return None if name == missing else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    reason = capability.training_unavailable_reason()
    assert reason == (
        f"the agent's train extra is not installed (no module named '{missing}'); "
        "install outpost[train]"
    )
    assert capability.training_capability() == f"no-federated-training: {reason}"


def test_a_broken_lookup_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(name: str, package: str | None = None) -> ModuleSpec | None:
        raise ValueError("torch.__spec__ is None\nmore detail")

    monkeypatch.setattr(importlib.util, "find_spec", fake)
    reason = capability.training_unavailable_reason()
    assert reason is not None
    assert "train extra is broken (torch: torch.__spec__ is None)" in reason
    assert "\n" not in reason


def test_importing_the_agent_does_not_import_torch() -> None:
    code = (
        "import sys, agent.training.capability, agent.training.datasets, "
        "agent.training.gguf_model, agent.training.lora_training, agent.cli; "
        "print(sorted(m for m in ('torch', 'transformers', 'peft', 'flwr') if m in sys.modules))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == "[]"
