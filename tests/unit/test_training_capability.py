"""training_unavailable_reason: None with the train extra, one clear line without it."""

from __future__ import annotations

import importlib
import subprocess
import sys
from types import ModuleType

import pytest

from agent.training import capability


def test_available_when_every_module_imports(monkeypatch: pytest.MonkeyPatch) -> None:
    imported: list[str] = []

    def fake(name: str) -> ModuleType:
        imported.append(name)
        return ModuleType(name)

    monkeypatch.setattr(importlib, "import_module", fake)
    assert capability.training_unavailable_reason() is None
    assert imported == ["torch", "transformers", "peft", "flwr"]


@pytest.mark.parametrize("missing", ["torch", "transformers", "peft", "flwr"])
def test_a_missing_module_is_named_with_the_fix(
    monkeypatch: pytest.MonkeyPatch, missing: str
) -> None:
    real = importlib.import_module

    def fake(name: str) -> ModuleType:
        if name == missing:
            raise ModuleNotFoundError(f"No module named '{name}'", name=name)
        return ModuleType(name) if name in capability.TRAIN_MODULES else real(name)

    monkeypatch.setattr(importlib, "import_module", fake)
    reason = capability.training_unavailable_reason()
    assert reason == (
        f"the agent's train extra is not installed (no module named '{missing}'); "
        "install outpost[train]"
    )


def test_a_broken_module_is_reported_not_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    def fake(name: str) -> ModuleType:
        raise OSError("libtorch_cpu.so: cannot open shared object file\nmore detail")

    monkeypatch.setattr(importlib, "import_module", fake)
    reason = capability.training_unavailable_reason()
    assert reason is not None
    assert "importing torch failed (OSError: libtorch_cpu.so" in reason
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
