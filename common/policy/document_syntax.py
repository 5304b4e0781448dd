"""Policy text (YAML or JSON) to a bounded tree of values that remember their line and column."""

from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

from common.errors import InvalidArgument

MAX_DOCUMENT_BYTES = 1024 * 1024  # as common.bundle_format.MAX_POLICY_BYTES
MAX_DEPTH = 10  # nested mappings and lists; the format needs 5
MAX_NODES = 50_000  # values of any kind in one document
MAX_NUMBER_CHARS = 40
MAX_SHOWN_CHARS = 60  # longer values are cut when an error quotes them
MAX_REPORTED_PROBLEMS = 50

Scalar = str | int | float | bool | None
Value = Scalar | list["Node"] | dict[str, "Node"]

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_BAD_CHARS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\ud800-\udfff\ufffe\uffff]")
_SURROGATE = re.compile("[\ud800-\udfff]")
_JSON_SPACE = re.compile(r"[ \t\n\r]*")
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_YAML_NULL = frozenset({"", "~", "null", "Null", "NULL"})
_YAML_BOOL = {"true": True, "True": True, "TRUE": True, "false": False, "False": False}
_YAML_BOOL["FALSE"] = False
_YAML_INT = re.compile(r"[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+")
_YAML_FLOAT = re.compile(r"[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?")
_YAML_SPECIAL_FLOAT = re.compile(r"[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN)")


@dataclass(frozen=True, slots=True)
class PolicyProblem:
    """One thing wrong with a document: where (field path, 1-based line and column) and what."""

    path: str  # "targets.cloud-mini.base_url", "routes[2].levels[0]"; "" for the document
    line: int  # 0 when the problem has no place in the text
    column: int
    message: str

    def __str__(self) -> str:
        where = f"{self.line}:{self.column}: " if self.line else ""
        return f"{where}{self.path + ': ' if self.path else ''}{self.message}"


class PolicyError(InvalidArgument):
    """The document is not a valid policy; `problems` says every thing found, in text order."""

    def __init__(self, source: str, problems: list[PolicyProblem]) -> None:
        self.source = source
        self.problems = sorted(problems, key=lambda p: (p.line, p.column, p.path))
        shown = [
            f"  {source}:{problem}" if problem.line else f"  {source}: {problem}"
            for problem in self.problems[:MAX_REPORTED_PROBLEMS]
        ]
        if len(self.problems) > MAX_REPORTED_PROBLEMS:
            shown.append(f"  ... and {len(self.problems) - MAX_REPORTED_PROBLEMS} more")
        count = len(self.problems)
        super().__init__(f"{source}: {count} problem{'s' * (count != 1)}:\n" + "\n".join(shown))


@dataclass(slots=True)
class Node:
    """A value of the document; a mapping also remembers where each of its keys is."""

    value: Value
    line: int
    column: int
    key_marks: dict[str, tuple[int, int]] = field(default_factory=dict)


def show(value: object) -> str:
    """A value as an error message may quote it: repr, cut to MAX_SHOWN_CHARS."""
    text = repr(value)
    return text if len(text) <= MAX_SHOWN_CHARS else text[: MAX_SHOWN_CHARS - 3] + "..."


def read_tree(text: str | bytes, source: str) -> Node:
    """The document's root mapping, or PolicyError (size, encoding, syntax, hostile YAML)."""
    text = _decode(text, source)
    start = len(text) - len(text.lstrip())
    if start == len(text) or not text.strip():
        raise _fail(source, 0, 0, "the policy document is empty")
    parser = _JsonParser(text, source) if _is_json(text, start) else _YamlComposer(text, source)
    root = parser.parse()
    if root.value is None:
        raise _fail(source, 0, 0, "the policy document is empty")
    if not isinstance(root.value, dict):
        kind = type_name(root.value)
        raise _fail(source, root.line, root.column, f"the policy must be a mapping, not {kind}")
    return root


def _is_json(text: str, start: int) -> bool:
    """A JSON document starts with [ or {" ({} too); {key: value} is YAML's flow style."""
    if text[start] == "[":
        return True
    rest = text[start + 1 : start + 1 + 4096].lstrip(" \t\r\n")
    return text[start] == "{" and rest[:1] in ('"', "}")


def type_name(value: Value) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    return "a mapping" if isinstance(value, dict) else "null"


def _fail(source: str, line: int, column: int, message: str) -> PolicyError:
    return PolicyError(source, [PolicyProblem("", line, column, message)])


def _decode(text: str | bytes, source: str) -> str:
    size = len(text) if isinstance(text, bytes) else len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_DOCUMENT_BYTES:
        raise _fail(source, 0, 0, f"the document has {size} bytes; at most {MAX_DOCUMENT_BYTES}")
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            line = data.count(b"\n", 0, exc.start) + 1
            column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
            raise _fail(source, line, column, "the document is not UTF-8 text") from None
    text = text.removeprefix("\ufeff")
    bad = _BAD_CHARS.search(text)
    if bad is not None:
        line = text.count("\n", 0, bad.start()) + 1
        column = bad.start() - (text.rfind("\n", 0, bad.start()) + 1) + 1
        code = f"U+{ord(bad.group()):04X}"
        raise _fail(source, line, column, f"character {code} is not allowed in a policy")
    return text


class _Builder:
    """Assembles nodes into a tree: limits, duplicate keys; shared by both parsers."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stack: list[tuple[Node, str | None]] = []  # container, key awaiting its value
        self.root: Node | None = None
        self.nodes = 0

    def fail(self, line: int, column: int, message: str) -> PolicyError:
        return _fail(self.source, line, column, message)

    def count(self, line: int, column: int) -> None:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(line, column, f"the document has more than {MAX_NODES} values")

    def key(self, key: str, line: int, column: int) -> None:
        container, _ = self.stack[-1]
        assert isinstance(container.value, dict)
        if key in container.key_marks:
            first = container.key_marks[key][0]
            raise self.fail(line, column, f"duplicate key {show(key)} (first on line {first})")
        container.key_marks[key] = (line, column)
        self.stack[-1] = (container, key)

    def expects_key(self) -> bool:
        return (
            bool(self.stack)
            and isinstance(self.stack[-1][0].value, dict)
            and (self.stack[-1][1] is None)
        )

    def open(self, node: Node) -> None:
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(node.line, node.column, f"nested deeper than {MAX_DEPTH} levels")
        self.stack.append((node, None))

    def close(self) -> None:
        node, _ = self.stack.pop()
        self.add(node)

    def add(self, node: Node) -> None:
        if not self.stack:
            self.root = node
            return
        container, key = self.stack[-1]
        if isinstance(container.value, list):
            container.value.append(node)
        else:
            assert isinstance(container.value, dict)
            assert key is not None
            container.value[key] = node
            self.stack[-1] = (container, None)


class _YamlComposer:
    """YAML events (libyaml when present) to nodes: no anchors, aliases or tags; one document."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.build = _Builder(source)

    def parse(self) -> Node:
        try:
            self._compose()
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            what = " ".join(part for part in (exc.context, exc.problem) if part)
            line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            raise self.build.fail(line, column, f"not valid YAML: {what}") from None
        except yaml.YAMLError as exc:
            raise self.build.fail(0, 0, f"not valid YAML: {show(str(exc))}") from None
        return self.build.root or Node(None, 0, 0)

    def _compose(self) -> None:
        build, documents = self.build, 0
        for event in yaml.parse(self.text, Loader=_LOADER):
            mark = event.start_mark
            line, column = (mark.line + 1, mark.column + 1) if mark else (0, 0)
            if isinstance(event, yaml.DocumentStartEvent):
                documents += 1
                if documents > 1:
                    raise build.fail(line, column, "a policy is one YAML document, not several")
            if isinstance(event, yaml.AliasEvent):
                raise build.fail(line, column, "YAML aliases (*name) are not allowed")
            if not isinstance(event, yaml.NodeEvent | yaml.CollectionEndEvent):
                continue
            if getattr(event, "anchor", None) is not None:
                raise build.fail(line, column, "YAML anchors (&name) are not allowed")
            tag = getattr(event, "tag", None)
            if tag is not None:
                tag = show(str(tag).replace("tag:yaml.org,2002:", "!!"))
                raise build.fail(line, column, f"YAML tags are not allowed (found {tag})")
            if isinstance(event, yaml.CollectionEndEvent):
                build.close()
                continue
            build.count(line, column)
            if build.expects_key():
                if not isinstance(event, yaml.ScalarEvent):
                    raise build.fail(line, column, "a mapping key must be a plain name")
                build.key(event.value, line, column)
            elif isinstance(event, yaml.ScalarEvent):
                build.add(Node(self._scalar(event, line, column), line, column))
            elif isinstance(event, yaml.MappingStartEvent):
                build.open(Node({}, line, column))
            else:
                build.open(Node([], line, column))

    def _scalar(self, event: yaml.ScalarEvent, line: int, column: int) -> Scalar:
        """YAML 1.2 core schema: yes/no/on/off stay strings, 010 is ten, 1_000 is a string."""
        text = event.value
        if event.style not in (None, "") or not event.implicit[0]:
            return text
        if text in _YAML_NULL:
            return None
        if text in _YAML_BOOL:
            return _YAML_BOOL[text]
        if _YAML_INT.fullmatch(text) or _YAML_FLOAT.fullmatch(text):
            if len(text) > MAX_NUMBER_CHARS:
                raise self.build.fail(line, column, f"number too long: {show(text)}")
            if _YAML_INT.fullmatch(text):
                return int(text, 0) if text[:2] in ("0o", "0x") else int(text)
            return float(text)
        if _YAML_SPECIAL_FLOAT.fullmatch(text):
            return float(text.replace(".", "", 1))
        return text


class _JsonParser:
    """Strict JSON (RFC 8259, no NaN) with positions, without recursion."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.build = _Builder(source)
        self.newlines = [match.start() for match in re.finditer("\n", text)]
        self.opened = False  # the innermost container was just opened: may close at once

    def mark(self, offset: int) -> tuple[int, int]:
        line = bisect.bisect_left(self.newlines, offset)
        start = self.newlines[line - 1] + 1 if line else 0
        return line + 1, offset - start + 1

    def fail(self, offset: int, message: str) -> PolicyError:
        return self.build.fail(*self.mark(offset), f"not valid JSON: {message}")

    def parse(self) -> Node:
        text, build = self.text, self.build
        pos = self._item(self._space(0))
        while build.stack:
            pos = self._space(pos)
            closer = "}" if isinstance(build.stack[-1][0].value, dict) else "]"
            if text.startswith(closer, pos):
                build.close()
                pos, self.opened = pos + 1, False
            elif self.opened:
                pos = self._item(pos)
            elif text.startswith(",", pos):
                pos = self._item(self._space(pos + 1))
            elif pos == len(text):
                opener = build.stack[-1][0]
                what = (
                    f"the '{'{' if closer == '}' else '['}' on line {opener.line} is never closed"
                )
                raise self.build.fail(*self.mark(pos), f"the document ends early: {what}")
            else:
                raise self.fail(pos, f"expected ',' or '{closer}'")
        pos = self._space(pos)
        if pos != len(text):
            raise self.fail(pos, "unexpected text after the document")
        assert build.root is not None
        return build.root

    def _space(self, pos: int) -> int:
        return _JSON_SPACE.match(self.text, pos).end()  # type: ignore[union-attr]

    def _item(self, pos: int) -> int:
        """An array element or an object member (name, colon, value) at pos."""
        if self.build.expects_key():
            if not self.text.startswith('"', pos):
                raise self.fail(pos, "expected a member name in double quotes")
            key, end = self._string(pos)
            self.build.key(key, *self.mark(pos))
            pos = self._space(end)
            if not self.text.startswith(":", pos):
                raise self.fail(pos, "expected ':' after a member name")
            pos = self._space(pos + 1)
        return self._value(pos)

    def _value(self, pos: int) -> int:
        """Adds the scalar at pos, or opens the container there; returns the offset after it."""
        text, build = self.text, self.build
        line, column = self.mark(pos)
        build.count(line, column)
        char = text[pos : pos + 1]
        if char in ("{", "["):
            build.open(Node({} if char == "{" else [], line, column))
            self.opened = True
            return pos + 1
        value: Any
        if char == '"':
            value, end = self._string(pos)
        elif (number := _JSON_NUMBER.match(text, pos)) is not None:
            end, digits = number.end(), number.group()
            if len(digits) > MAX_NUMBER_CHARS:
                raise self.fail(pos, f"number too long: {show(digits)}")
            value = float(digits) if any(c in digits for c in ".eE") else int(digits)
        else:
            words = {"true": True, "false": False, "null": None}
            word = next((w for w in words if text.startswith(w, pos)), None)
            if word is None:
                raise self.fail(pos, "expected a value" if char else "the document ends early")
            value, end = words[word], pos + len(word)
        build.add(Node(value, line, column))
        self.opened = False
        return end

    def _string(self, pos: int) -> tuple[str, int]:
        try:
            value, end = json.decoder.scanstring(self.text, pos + 1, True)  # type: ignore[attr-defined]
        except json.JSONDecodeError as exc:
            raise self.fail(exc.pos, exc.msg) from None
        if _SURROGATE.search(value):
            raise self.fail(pos, "a \\u escape leaves a lone surrogate")
        return str(value), int(end)
