"""Whether this agent can train: the optional train extra's modules, imported only when asked."""

from __future__ import annotations

import importlib

# The modules the site trainer and its Flower ClientApp need, as the train extra installs them.
TRAIN_MODULES = ("torch", "transformers", "peft", "flwr")
INSTALL_HINT = "install outpost[train]"


def training_unavailable_reason() -> str | None:
    """None when every training module imports; otherwise one line saying which did not."""
    for name in TRAIN_MODULES:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            detail = str(exc).splitlines()[0] if str(exc) else f"no module named {name!r}"
            if isinstance(exc, ModuleNotFoundError):
                detail = detail[0].lower() + detail[1:]
            return f"the agent's train extra is not installed ({detail}); {INSTALL_HINT}"
        except Exception as exc:  # a broken install fails in many ways; report, don't crash
            first = str(exc).splitlines()[0] if str(exc) else ""
            return (
                f"the agent's train extra is broken: importing {name} failed "
                f"({type(exc).__name__}: {first}); reinstall outpost[train]"
            )
    return None
