"""Whether this agent can train: the optional train extra's modules are installed."""

from __future__ import annotations

import importlib.util

# The modules the site trainer and its Flower ClientApp need, as the train extra installs them.
TRAIN_MODULES = ("torch", "transformers", "peft", "flwr")
INSTALL_HINT = "install outpost[train]"


def training_unavailable_reason() -> str | None:
    """None when every training module is installed; otherwise one line saying which is not.

    Looked up, not imported: importing torch and transformers takes seconds at every agent
    start. A module that is installed but broken fails the first training round instead, and
    that site's error reaches the job."""
    for name in TRAIN_MODULES:
        try:
            found = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError) as exc:
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            return f"the agent's train extra is broken ({name}: {first}); reinstall outpost[train]"
        if not found:
            return (
                f"the agent's train extra is not installed (no module named {name!r}); "
                f"{INSTALL_HINT}"
            )
    return None


def training_capability() -> str:
    """The capability the agent reports in its Hello: `federated-training`, or
    `no-federated-training: <reason>` (the control plane skips it in jobs with that reason)."""
    reason = training_unavailable_reason()
    return "federated-training" if reason is None else f"no-federated-training: {reason}"
