"""A site's fine-tuning dataset: a directory of .jsonl files, loaded with bounds and split."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ROLES: Final = ("system", "user", "assistant")
DEFAULT_MAX_FILE_BYTES: Final = 64 * 1024 * 1024
DEFAULT_MAX_EXAMPLES: Final = 100_000
DEFAULT_MAX_LINE_BYTES: Final = 256 * 1024
DEFAULT_HELDOUT_FRACTION: Final = 0.2


class DatasetError(ValueError):
    """A dataset is missing, unreadable, malformed, too large, or badly named."""


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One training example: plain ``text``, or a chat rendered with the model's template."""

    text: str | None = None
    messages: tuple[Message, ...] | None = None

    def identity(self) -> str:
        """A canonical rendering of the example, independent of the tokenizer."""
        if self.text is not None:
            return json.dumps({"text": self.text}, ensure_ascii=False)
        turns = [[m.role, m.content] for m in self.messages or ()]
        return json.dumps({"messages": turns}, ensure_ascii=False)

    def render(self, apply_chat_template: Callable[..., object]) -> str:
        """The text the model trains on; chats go through the tokenizer's chat template."""
        if self.text is not None:
            return self.text
        turns = [{"role": m.role, "content": m.content} for m in self.messages or ()]
        rendered = apply_chat_template(turns, tokenize=False)
        if not isinstance(rendered, str):
            raise DatasetError("the tokenizer's chat template did not render to text")
        return rendered


@dataclass(frozen=True)
class DatasetLimits:
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    max_examples: int = DEFAULT_MAX_EXAMPLES
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES


@dataclass(frozen=True)
class Split:
    train: tuple[Example, ...]
    heldout: tuple[Example, ...]


def dataset_dir(root: Path, name: str) -> Path:
    """The directory of dataset ``name`` under ``root``; DatasetError for any name that is not
    one plain path component (separators, ``..``, absolute paths, NUL, hidden names)."""
    if not isinstance(name, str) or not name:
        raise DatasetError("dataset name must be a non-empty string")
    unsafe = (
        "\x00" in name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or name.startswith(".")
        or os.path.isabs(name)
        or Path(name).name != name
        or any(ord(ch) < 32 for ch in name)
    )
    if unsafe:
        raise DatasetError(f"dataset name {name!r} is not a single plain path component")
    return Path(root) / name


def load_dataset(root: Path, name: str, limits: DatasetLimits | None = None) -> list[Example]:
    """Every example of dataset ``name`` under ``root``, files in name order, lines in order."""
    limits = limits or DatasetLimits()
    directory = dataset_dir(root, name)
    if not directory.exists():
        raise DatasetError(f"dataset {name!r} not found: no directory {directory}")
    if not directory.is_dir():
        raise DatasetError(f"dataset {name!r} at {directory} is not a directory")
    try:
        files = sorted(p for p in directory.iterdir() if p.name.endswith(".jsonl"))
    except OSError as exc:
        raise DatasetError(f"cannot list dataset directory {directory}: {exc}") from exc
    if not files:
        raise DatasetError(f"dataset {name!r} has no .jsonl files in {directory}")
    examples: list[Example] = []
    for path in files:
        _read_file(path, limits, examples)
    if not examples:
        raise DatasetError(f"dataset {name!r} has no examples in its .jsonl files")
    return examples


def _read_file(path: Path, limits: DatasetLimits, into: list[Example]) -> None:
    try:
        if not path.is_file():
            raise DatasetError(f"{path} is not a regular file")
        size = path.stat().st_size
        if size > limits.max_file_bytes:
            raise DatasetError(f"{path} is {size} bytes, over the {limits.max_file_bytes} limit")
        with path.open("rb") as file:
            data = file.read(limits.max_file_bytes + 1)
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > limits.max_file_bytes:
        raise DatasetError(f"{path} is over the {limits.max_file_bytes} byte limit")
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if len(raw) > limits.max_line_bytes:
            raise DatasetError(
                f"{path} line {number} is {len(raw)} bytes, over the {limits.max_line_bytes} limit"
            )
        if not raw.strip():
            continue
        if len(into) >= limits.max_examples:
            raise DatasetError(
                f"{path} line {number}: over the {limits.max_examples} example limit"
            )
        into.append(_parse_line(raw, f"{path} line {number}"))


def _parse_line(raw: bytes, where: str) -> Example:
    try:
        record = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{where}: not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{where}: malformed JSON ({exc.msg} at column {exc.colno})") from exc
    except RecursionError as exc:
        raise DatasetError(f"{where}: JSON nested too deeply") from exc
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: expected a JSON object, got {type(record).__name__}")
    keys = set(record)
    if keys == {"text"}:
        text = record["text"]
        if not isinstance(text, str) or not text.strip():
            raise DatasetError(f'{where}: "text" must be a non-empty string')
        return Example(text=text)
    if keys == {"messages"}:
        return Example(messages=_parse_messages(record["messages"], where))
    raise DatasetError(
        f'{where}: expected exactly one field, "text" or "messages"; got {sorted(keys)}'
    )


def _parse_messages(value: object, where: str) -> tuple[Message, ...]:
    if not isinstance(value, list) or not value:
        raise DatasetError(f'{where}: "messages" must be a non-empty list')
    messages: list[Message] = []
    for index, item in enumerate(value):
        at = f"{where}: messages[{index}]"
        if not isinstance(item, dict) or set(item) != {"role", "content"}:
            raise DatasetError(f'{at} must be an object with exactly "role" and "content"')
        role, content = item["role"], item["content"]
        if role not in ROLES:
            raise DatasetError(f"{at}: role must be one of {', '.join(ROLES)}; got {role!r}")
        if not isinstance(content, str):
            raise DatasetError(f"{at}: content must be a string")
        messages.append(Message(role=role, content=content))
    return tuple(messages)


def _stable_rank(example: Example) -> bytes:
    return hashlib.sha256(example.identity().encode("utf-8")).digest()


def split_examples(
    examples: Sequence[Example], heldout_fraction: float = DEFAULT_HELDOUT_FRACTION
) -> Split:
    """Train and held-out examples, chosen by a hash of each example's content: the same
    examples give the same split whatever their order. At least one example is held out when
    there are two or more (and at least one is kept for training); copies of one example
    fall on the same side unless that would empty a side."""
    if not 0.0 <= heldout_fraction < 1.0:
        raise DatasetError(f"held-out fraction must be in [0, 1), got {heldout_fraction}")
    order = sorted(range(len(examples)), key=lambda i: _stable_rank(examples[i]))
    count = len(order)
    wanted = min(max(round(count * heldout_fraction), 1), count - 1) if count >= 2 else 0
    if wanted == 0:
        return Split(train=tuple(examples), heldout=())
    ids = [examples[i].identity() for i in order]
    cut = wanted
    # Keep copies of one example on one side when that still leaves both sides non-empty.
    while cut < count - 1 and ids[cut] == ids[cut - 1]:
        cut += 1
    if ids[cut] == ids[cut - 1]:
        cut = wanted
        while cut > 1 and ids[cut] == ids[cut - 1]:
            cut -= 1
        if ids[cut] == ids[cut - 1]:
            cut = wanted
    held = set(order[:cut])
    return Split(
        train=tuple(e for i, e in enumerate(examples) if i not in held),
        heldout=tuple(examples[i] for i in order[:cut]),
    )
