"""OpenAI-style JSON bodies become domain requests; every defect names its field."""

from __future__ import annotations

import json
from typing import Any

import pytest

from common.errors import InvalidArgument
from common.inference import ChatMessage, ChatRequest, CompletionRequest, SamplingParams
from common.json_body import parse_json_object
from common.openai_schema import (
    StreamOptions,
    chat_request,
    completion_request,
    stream_options,
)

USER_HI: dict[str, Any] = {"role": "user", "content": "hi"}


def chat(**fields: Any) -> ChatRequest:
    body: dict[str, Any] = {"model": "m", "messages": [USER_HI]}
    body.update(fields)
    return chat_request(body)


def completion(**fields: Any) -> CompletionRequest:
    body: dict[str, Any] = {"model": "m", "prompt": "Once"}
    body.update(fields)
    return completion_request(body)


# --- parse_json_object -------------------------------------------------------------------


def test_json_object_is_parsed() -> None:
    assert parse_json_object(b'{"model": "m", "n": 1}') == {"model": "m", "n": 1}


def test_utf8_text_is_decoded() -> None:
    assert parse_json_object('{"prompt": "café 🙂"}'.encode()) == {"prompt": "café 🙂"}


@pytest.mark.parametrize("body", [b"{", b'{"model": }', b"{'model': 'm'}", b"nope"])
def test_malformed_json_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_json_object(body)


@pytest.mark.parametrize("body", [b"", b"  \n"])
def test_empty_body_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="body is empty"):
        parse_json_object(body)


@pytest.mark.parametrize("body", [b"[]", b'[{"model": "m"}]', b'"text"', b"3", b"null", b"true"])
def test_json_that_is_not_an_object_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="must be a JSON object"):
        parse_json_object(body)


@pytest.mark.parametrize("body", [b'{"prompt": "\xff"}', b'{"prompt": "caf\xe9"}', b"\xc3("])
def test_invalid_utf8_is_rejected(body: bytes) -> None:
    with pytest.raises(InvalidArgument, match="not valid JSON"):
        parse_json_object(body)


def test_deeply_nested_json_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        parse_json_object(b"[" * 100_000)


def test_integer_with_too_many_digits_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument):
        parse_json_object(b'{"seed": 1' + b"0" * 5000 + b"}")


# --- chat requests -----------------------------------------------------------------------


def test_minimal_chat_request() -> None:
    request = chat_request(
        {
            "model": "smol",
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ],
        }
    )
    assert request == ChatRequest(
        model="smol",
        messages=(ChatMessage("system", "be brief"), ChatMessage("user", "hi")),
        sampling=SamplingParams(),
    )


def test_missing_model_is_rejected() -> None:
    with pytest.raises(InvalidArgument, match="'model' is required"):
        chat_request({"messages": [USER_HI]})
    with pytest.raises(InvalidArgument, match="'model' is required"):
        completion_request({"prompt": "x"})


@pytest.mark.parametrize("model", [3, ["m"], {"name": "m"}, True])
def test_model_that_is_not_a_string_is_rejected(model: object) -> None:
    with pytest.raises(InvalidArgument, match="'model' must be a string"):
        chat(model=model)


@pytest.mark.parametrize("messages", [None, "hi", {"role": "user"}, 3])
def test_messages_must_be_a_list(messages: object) -> None:
    with pytest.raises(InvalidArgument, match="'messages' must be an array"):
        chat(messages=messages)


def test_message_that_is_not_an_object_is_rejected_naming_its_index() -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[1\] must be an object"):
        chat(messages=[USER_HI, "hello"])


@pytest.mark.parametrize("role", [None, 1, ["user"]])
def test_message_role_must_be_a_string(role: object) -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.role must be a string"):
        chat(messages=[{"role": role, "content": "x"}])


def test_missing_or_null_content_is_empty_text() -> None:
    request = chat(messages=[{"role": "assistant"}, {"role": "user", "content": None}])
    assert [m.content for m in request.messages] == ["", ""]


def test_content_as_list_of_text_parts_is_joined() -> None:
    content = [{"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]
    request = chat(messages=[{"role": "user", "content": content}])
    assert request.messages == (ChatMessage("user", "Hello, world"),)


@pytest.mark.parametrize(
    "part",
    [
        {"type": "image_url", "image_url": {"url": "http://x/y.png"}},
        {"type": "input_audio", "input_audio": {"data": "", "format": "wav"}},
        {"text": "no type"},
        "just a string",
    ],
)
def test_non_text_parts_are_rejected(part: object) -> None:
    content = [{"type": "text", "text": "look:"}, part]
    with pytest.raises(InvalidArgument, match=r"messages\[1\]\.content: only text parts"):
        chat(messages=[USER_HI, {"role": "user", "content": content}])


@pytest.mark.parametrize("part", [{"type": "text"}, {"type": "text", "text": 5}])
def test_text_part_needs_text(part: dict[str, Any]) -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.content: a text part needs"):
        chat(messages=[{"role": "user", "content": [part]}])


@pytest.mark.parametrize("content", [5, {"type": "text", "text": "x"}, True])
def test_content_of_another_type_is_rejected(content: object) -> None:
    with pytest.raises(InvalidArgument, match=r"messages\[0\]\.content must be a string"):
        chat(messages=[{"role": "user", "content": content}])


# --- completion requests -----------------------------------------------------------------


def test_completion_request() -> None:
    assert completion(prompt="Once upon") == CompletionRequest(
        model="m", prompt="Once upon", sampling=SamplingParams()
    )


def test_completion_prompt_as_one_element_list() -> None:
    assert completion(prompt=["Once upon"]).prompt == "Once upon"


@pytest.mark.parametrize("prompt", [None, 3, ["a", "b"], [1], []])
def test_completion_prompt_must_be_a_string(prompt: object) -> None:
    with pytest.raises(InvalidArgument, match="'prompt' must be a string"):
        completion(prompt=prompt)


# --- sampling ----------------------------------------------------------------------------


def test_all_sampling_fields_are_read() -> None:
    sampling = chat(
        max_tokens=20,
        temperature=0.5,
        top_p=0.9,
        top_k=30,
        min_p=0.1,
        repeat_penalty=1.2,
        seed=3,
        stop=["\n"],
        n=1,
    ).sampling
    assert sampling == SamplingParams(
        max_tokens=20,
        temperature=0.5,
        top_p=0.9,
        top_k=30,
        min_p=0.1,
        repeat_penalty=1.2,
        seed=3,
        stop=("\n",),
    )


def test_integers_are_accepted_as_numbers_and_become_floats() -> None:
    sampling = completion(temperature=1, top_p=0).sampling
    assert sampling.temperature == 1.0
    assert isinstance(sampling.temperature, float)
    assert sampling.top_p == 0.0


def test_null_sampling_fields_mean_default() -> None:
    assert completion(temperature=None, max_tokens=None, stop=None, seed=None).sampling == (
        SamplingParams()
    )


def test_stop_as_string() -> None:
    assert completion(stop="END").sampling.stop == ("END",)


def test_stop_as_list() -> None:
    assert completion(stop=["a", "b"]).sampling.stop == ("a", "b")
    assert completion(stop=[]).sampling.stop == ()


@pytest.mark.parametrize("stop", [5, ["a", 1], {"a": 1}, [None], True])
def test_stop_of_another_type_is_rejected(stop: object) -> None:
    with pytest.raises(InvalidArgument, match="'stop' must be a string or an array of strings"):
        completion(stop=stop)


@pytest.mark.parametrize("field", ["temperature", "top_p", "min_p", "repeat_penalty"])
@pytest.mark.parametrize("value", ["0.5", True, False, [0.5], {"v": 1}])
def test_number_fields_reject_other_types(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=f"'{field}' must be a number"):
        completion(**{field: value})


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity", b"1e999"])
def test_non_finite_numbers_from_json_are_rejected(literal: bytes) -> None:
    body = parse_json_object(b'{"model": "m", "prompt": "x", "temperature": ' + literal + b"}")
    with pytest.raises(InvalidArgument, match="'temperature' must be finite"):
        completion_request(body)


def test_huge_integer_temperature_is_an_invalid_argument() -> None:
    with pytest.raises(InvalidArgument, match="temperature"):
        completion(temperature=10**400)


@pytest.mark.parametrize("field", ["max_tokens", "max_completion_tokens", "top_k", "seed", "n"])
@pytest.mark.parametrize("value", [True, False, 1.0, 2.5, "5", [5]])
def test_integer_fields_reject_other_types_including_booleans(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=f"'{field}' must be an integer"):
        completion(**{field: value})


def test_max_completion_tokens_is_preferred_over_max_tokens() -> None:
    assert completion(max_tokens=10, max_completion_tokens=20).sampling.max_tokens == 20
    assert completion(max_tokens=10).sampling.max_tokens == 10
    assert completion(max_tokens=10, max_completion_tokens=None).sampling.max_tokens == 10
    assert completion(max_completion_tokens=7).sampling.max_tokens == 7


@pytest.mark.parametrize("n", [0, 2, -1])
def test_n_other_than_one_is_rejected(n: int) -> None:
    with pytest.raises(InvalidArgument, match="'n' must be 1"):
        chat(n=n)


def test_n_of_one_or_absent_is_accepted() -> None:
    assert chat(n=1).sampling == chat().sampling == SamplingParams()


# --- streaming options ---------------------------------------------------------------------


def test_streaming_is_off_by_default() -> None:
    assert stream_options({}) == StreamOptions(stream=False, include_usage=False)
    assert stream_options({"stream": None}) == StreamOptions(stream=False, include_usage=False)


def test_stream_with_usage() -> None:
    body = {"stream": True, "stream_options": {"include_usage": True}}
    assert stream_options(body) == StreamOptions(stream=True, include_usage=True)


def test_stream_without_usage() -> None:
    body = {"stream": True, "stream_options": {"include_usage": False}}
    assert stream_options(body) == StreamOptions(stream=True, include_usage=False)
    assert stream_options({"stream": True, "stream_options": None}).include_usage is False


@pytest.mark.parametrize("stream", [1, 0, "true", "yes", [True]])
def test_stream_must_be_a_boolean(stream: object) -> None:
    with pytest.raises(InvalidArgument, match="'stream' must be a boolean"):
        stream_options({"stream": stream})


@pytest.mark.parametrize("options", ["include_usage", [{"include_usage": True}], 1])
def test_stream_options_must_be_an_object(options: object) -> None:
    with pytest.raises(InvalidArgument, match="'stream_options' must be an object"):
        stream_options({"stream": True, "stream_options": options})


@pytest.mark.parametrize("include_usage", [1, "true", [True]])
def test_include_usage_must_be_a_boolean(include_usage: object) -> None:
    with pytest.raises(InvalidArgument, match=r"'stream_options\.include_usage' must be a boolean"):
        stream_options({"stream": True, "stream_options": {"include_usage": include_usage}})


def test_body_read_from_bytes_end_to_end() -> None:
    raw = json.dumps(
        {
            "model": "smol",
            "messages": [{"role": "user", "content": [{"type": "text", "text": "hi"}]}],
            "max_completion_tokens": 5,
            "stop": "\n",
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    body = parse_json_object(raw)
    request = chat_request(body)
    assert request.messages == (ChatMessage("user", "hi"),)
    assert request.sampling.max_tokens == 5
    assert request.sampling.stop == ("\n",)
    assert stream_options(body) == StreamOptions(stream=True, include_usage=True)
