"""Chat templates from model files render in a sandbox; failures are InvalidArgument."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from agent.engine.chat_template import ChatTemplate
from common.errors import InvalidArgument
from common.inference import ChatMessage

CHATML = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CONVERSATION = (
    ChatMessage("system", "You are brief."),
    ChatMessage("user", "Hello!"),
)


def render(source: str, messages: tuple[ChatMessage, ...] = CONVERSATION) -> str:
    return ChatTemplate(source, bos_token="<s>", eos_token="</s>").render(messages)


def test_chatml_renders_messages_and_generation_prompt() -> None:
    assert render(CHATML) == (
        "<|im_start|>system\nYou are brief.<|im_end|>\n"
        "<|im_start|>user\nHello!<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_template_can_be_rendered_repeatedly() -> None:
    template = ChatTemplate(CHATML, bos_token="", eos_token="")
    first = template.render([ChatMessage("user", "one")])
    second = template.render([ChatMessage("user", "two")])
    assert "one" in first
    assert "two" in second
    assert "one" not in second


def test_bos_and_eos_tokens_are_available() -> None:
    source = "{{ bos_token }}{% for m in messages %}{{ m.content }}{{ eos_token }}{% endfor %}"
    assert render(source) == "<s>You are brief.</s>Hello!</s>"


def test_trim_blocks_removes_newlines_after_tags() -> None:
    source = "{% for m in messages %}\n{{ m.role }}\n{% endfor %}\n"
    assert render(source) == "system\nuser\n"


def test_strftime_now_is_available() -> None:
    before = datetime.now(UTC).year
    rendered = render("{{ strftime_now('%Y') }}")
    assert rendered in {str(before), str(datetime.now(UTC).year)}


def test_raise_exception_becomes_invalid_argument() -> None:
    source = (
        "{% if messages[0]['role'] != 'user' %}"
        "{{ raise_exception('Conversation roles must start with user') }}"
        "{% endif %}ok"
    )
    with pytest.raises(InvalidArgument, match="Conversation roles must start with user") as error:
        render(source)
    assert "chat template rejected the messages" in str(error.value)
    assert render(source, (ChatMessage("user", "hi"),)) == "ok"


@pytest.mark.parametrize(
    "source",
    [
        "{{ ''.__class__.__mro__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ messages.__class__.__base__ }}",
        "{{ raise_exception.__globals__['InvalidArgument'] }}",
    ],
)
def test_sandbox_refuses_access_to_internals(source: str) -> None:
    with pytest.raises(InvalidArgument, match="is unsafe"):
        render(source)


@pytest.mark.parametrize(
    "source",
    [
        "{{ messages.append({'role': 'user', 'content': 'injected'}) }}",
        "{% set _ = messages.pop() %}{{ messages | length }}",
        "{{ messages[0].update({'content': 'changed'}) }}",
        "{{ messages.clear() }}",
    ],
)
def test_sandbox_refuses_mutation(source: str) -> None:
    with pytest.raises(InvalidArgument, match="chat template failed to render") as error:
        render(source)
    assert "unsafe" in str(error.value)


@pytest.mark.parametrize(
    "expression", ["''.__class__", "raise_exception.__globals__", "messages.__len__"]
)
def test_unsafe_attribute_alone_renders_as_nothing(expression: str) -> None:
    assert render("[{{ " + expression + " }}]") == "[]"


def test_undefined_attribute_access_becomes_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="chat template failed to render"):
        render("{{ tools.name.first }}")


def test_callers_messages_are_not_modified() -> None:
    messages = (ChatMessage("user", "keep me"),)
    with pytest.raises(InvalidArgument):
        render("{{ messages[0].update({'content': 'x'}) }}", messages)
    assert messages == (ChatMessage("user", "keep me"),)
