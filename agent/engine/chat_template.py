"""Renders chat messages with the Jinja chat template a GGUF file carries in its metadata."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import NoReturn

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from common.errors import InvalidArgument
from common.inference import ChatMessage


def _raise_exception(message: str) -> NoReturn:
    raise InvalidArgument(f"chat template rejected the messages: {message}")


def _strftime_now(fmt: str) -> str:
    return datetime.now(UTC).strftime(fmt)


class ChatTemplate:
    """A model's chat template, compiled once in a sandbox (templates are data from a file)."""

    def __init__(self, source: str, *, bos_token: str, eos_token: str) -> None:
        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
        env.globals["raise_exception"] = _raise_exception
        env.globals["strftime_now"] = _strftime_now
        self._template = env.from_string(source)
        self._bos_token = bos_token
        self._eos_token = eos_token

    def render(self, messages: Sequence[ChatMessage]) -> str:
        try:
            return self._template.render(
                messages=[{"role": m.role, "content": m.content} for m in messages],
                add_generation_prompt=True,
                bos_token=self._bos_token,
                eos_token=self._eos_token,
            )
        except InvalidArgument:
            raise
        except TemplateError as exc:
            raise InvalidArgument(f"chat template failed to render: {exc}") from exc
        except Exception as exc:  # a template is code from a file: any error is the template's
            raise InvalidArgument(f"chat template failed to render: {exc!r}") from exc
