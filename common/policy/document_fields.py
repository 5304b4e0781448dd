"""Typed reads of policy fields that record each problem with its field path and position."""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Collection, Sequence
from typing import TypeVar
from urllib.parse import urlsplit

from common.policy.document_syntax import Node, PolicyProblem, show, type_name
from common.policy.policy_model import DEFAULT_LEVELS

MAX_NAME_CHARS = 63
MAX_URL_CHARS = 2048
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")  # as the fleet's identifiers
_PLAIN_SEGMENT = re.compile(r"[A-Za-z0-9_-]+")

Path = tuple[str | int, ...]
T = TypeVar("T")


def render_path(path: Path) -> str:
    """("routes", 2, "levels", 0) -> "routes[2].levels[0]"; odd names in ["..."]."""
    text = ""
    for segment in path:
        if isinstance(segment, int):
            text += f"[{segment}]"
        elif _PLAIN_SEGMENT.fullmatch(segment):
            text += f".{segment}" if text else segment
        else:
            text += f"[{show(segment)}]"
    return text


def suggestion(word: str, choices: Collection[str]) -> str:
    """' (did you mean 'x'?)' for a close choice, else ''."""
    folded = {choice.lower(): choice for choice in choices}
    close = folded.get(word.lower()) or next(
        iter(difflib.get_close_matches(word.lower(), list(folded), n=1, cutoff=0.6)), None
    )
    if close is None:
        return ""
    return f" (did you mean {show(folded.get(close, close))}?)"


def listing(choices: Sequence[str], limit: int = 12) -> str:
    shown = ", ".join(choices[:limit])
    return shown + (f", ... ({len(choices)} in all)" if len(choices) > limit else "")


class Fields:
    """Reads values out of nodes; a wrong one is recorded (path, line, column) and gives None.

    It also knows the names declared so far (levels, targets, roles) that fields refer to.
    """

    def __init__(self) -> None:
        self.problems: list[PolicyProblem] = []
        self.warnings: list[PolicyProblem] = []
        self.levels = DEFAULT_LEVELS
        self.levels_known = True  # False after a bad `levels`: level names go unchecked
        self.targets: list[str] = []
        self.roles: list[str] = []

    def get(
        self,
        entries: dict[str, Node],
        key: str,
        path: Path,
        read: Callable[[Node, Path], T | None],
    ) -> T | None:
        """read(node, path) of the entry `key`, or None when it is absent."""
        node = entries.get(key)
        return None if node is None else read(node, (*path, key))

    def level(self, node: Node, path: Path) -> str | None:
        if not self.levels_known:
            return self.text(node, path, max_chars=MAX_NAME_CHARS + 1)
        return self.reference(node, path, self.levels, "level")

    def level_set(self, node: Node, path: Path) -> tuple[str, ...] | None:
        """Distinct levels, sorted low to high."""
        if not self.levels_known:
            return None
        names = self.references(node, path, self.levels, "level", max_items=len(self.levels))
        return None if names is None else tuple(sorted(names, key=self.levels.index))

    def unique_name(
        self, entries: dict[str, Node], path: Path, seen: dict[str, int], what: str
    ) -> str:
        """The item's `name`, recorded in `seen` (name -> line); "" when missing or bad."""
        node = entries.get("name")
        name = None if node is None else self.name(node, (*path, "name"), what)
        if node is None or name is None:
            return ""
        if name in seen:
            message = f"duplicate {what} name {show(name)} (first on line {seen[name]})"
            self.error(node, (*path, "name"), message)
        seen.setdefault(name, node.line)
        return name

    def error(self, node: Node, path: Path, message: str) -> None:
        self.problems.append(PolicyProblem(render_path(path), node.line, node.column, message))

    def warn(self, node: Node, path: Path, message: str) -> None:
        self.warnings.append(PolicyProblem(render_path(path), node.line, node.column, message))

    def key_node(self, mapping: Node, key: str) -> Node:
        """A node placed at `key` itself (not its value), for problems about the key."""
        line, column = mapping.key_marks.get(key, (mapping.line, mapping.column))
        return Node(key, line, column)

    def mapping(
        self,
        node: Node,
        path: Path,
        allowed: Sequence[str],
        required: Sequence[str] = (),
    ) -> dict[str, Node] | None:
        """A mapping with only `allowed` keys (a typo is named) and every `required` one."""
        if not isinstance(node.value, dict):
            self.error(node, path, f"expected a mapping, got {type_name(node.value)}")
            return None
        for key in node.value:
            if key not in allowed:
                hint = suggestion(key, allowed) or f"; known keys: {listing(allowed)}"
                self.error(self.key_node(node, key), (*path, key), f"unknown key{hint}")
        for key in required:
            if key not in node.value:
                self.error(node, path, f"missing required key {show(key)}")
        return {key: value for key, value in node.value.items() if key in allowed}

    def named(
        self, node: Node, path: Path, what: str, *, max_items: int, min_items: int = 0
    ) -> dict[str, Node] | None:
        """A mapping of user-chosen names (checked against NAME) to their entries."""
        if not isinstance(node.value, dict):
            self.error(
                node, path, f"expected a mapping of {what} names, got {type_name(node.value)}"
            )
            return None
        count = len(node.value)
        if count > max_items or count < min_items:
            bounds = f"{min_items} to {max_items}" if min_items else f"at most {max_items}"
            self.error(node, path, f"has {count} {what}s; {bounds} are allowed")
            return None
        entries = {}
        for key, value in node.value.items():
            if self.check_name(self.key_node(node, key), (*path, key), key, what):
                entries[key] = value
        return entries

    def check_name(self, node: Node, path: Path, name: str, what: str) -> bool:
        if NAME.fullmatch(name):
            return True
        self.error(
            node,
            path,
            f"{what} name {show(name)} must be 1 to {MAX_NAME_CHARS} of A-Z a-z 0-9 . _ - "
            "(starting with a letter or digit)",
        )
        return False

    def sequence(
        self, node: Node, path: Path, *, max_items: int, min_items: int = 0
    ) -> list[Node] | None:
        if not isinstance(node.value, list):
            self.error(node, path, f"expected a list, got {type_name(node.value)}")
            return None
        count = len(node.value)
        if count < min_items:
            self.error(
                node,
                path,
                "must not be empty" if count == 0 else f"needs at least {min_items} items",
            )
            return None
        if count > max_items:
            self.error(node, path, f"has {count} items; at most {max_items} are allowed")
            return None
        return node.value

    def text(self, node: Node, path: Path, *, max_chars: int) -> str | None:
        """A string of 1..max_chars characters, not only blanks."""
        value = node.value
        if not isinstance(value, str):
            self.error(node, path, f"expected a string, got {type_name(value)}")
            return None
        if not value.strip():
            self.error(node, path, "must not be empty")
            return None
        if len(value) > max_chars:
            self.error(node, path, f"is {len(value)} characters long; at most {max_chars}")
            return None
        return value

    def name(self, node: Node, path: Path, what: str) -> str | None:
        value = self.text(node, path, max_chars=MAX_NAME_CHARS + 1)
        if value is None or not self.check_name(node, path, value, what):
            return None
        return value

    def choice(self, node: Node, path: Path, choices: Sequence[str], what: str) -> str | None:
        value = self.text(node, path, max_chars=200)
        if value is None:
            return None
        if value not in choices:
            hint = suggestion(value, choices)
            self.error(node, path, f"unknown {what} {show(value)}{hint}; one of {listing(choices)}")
            return None
        return value

    def flag(self, node: Node, path: Path) -> bool | None:
        if not isinstance(node.value, bool):
            self.error(node, path, f"expected true or false, got {type_name(node.value)}")
            return None
        return node.value

    def integer(self, node: Node, path: Path, *, minimum: int, maximum: int) -> int | None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int):
            got = show(value) if isinstance(value, float) else type_name(value)
            self.error(node, path, f"expected a whole number, got {got}")
            return None
        if not minimum <= value <= maximum:
            self.error(node, path, f"{value} is out of range: {minimum} to {maximum}")
            return None
        return value

    def number(self, node: Node, path: Path, *, minimum: float, maximum: float) -> float | None:
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            self.error(node, path, f"expected a number, got {type_name(value)}")
            return None
        if not math.isfinite(value):
            self.error(node, path, "must be a finite number")
            return None
        if value < minimum:
            self.error(node, path, f"{value:g} is below the minimum of {minimum:g}")
            return None
        if value > maximum:
            self.error(node, path, f"{value:g} is above the maximum of {maximum:g}")
            return None
        return float(value)

    def references(
        self,
        node: Node,
        path: Path,
        known: Sequence[str],
        what: str,
        *,
        max_items: int,
        min_items: int = 1,
    ) -> tuple[str, ...] | None:
        """A list of distinct names, each one of `known`."""
        items = self.sequence(node, path, max_items=max_items, min_items=min_items)
        if items is None:
            return None
        names: list[str] = []
        ok = True
        for index, item in enumerate(items):
            name = self.reference(item, (*path, index), known, what)
            if name is not None and name in names:
                self.error(item, (*path, index), f"{show(name)} is listed twice")
                ok = False
            elif name is None:
                ok = False
            else:
                names.append(name)
        return tuple(names) if ok else None

    def reference(self, node: Node, path: Path, known: Sequence[str], what: str) -> str | None:
        """One name that must be one of `known` (a close one is suggested)."""
        value = self.text(node, path, max_chars=MAX_NAME_CHARS + 1)
        if value is None:
            return None
        if value not in known:
            hint = suggestion(value, known)
            choices = f"; {what}s are {listing(known)}" if known else f"; no {what}s are defined"
            self.error(node, path, f"unknown {what} {show(value)}{hint or choices}")
            return None
        return value

    def url(self, node: Node, path: Path) -> str | None:
        """An http(s) URL with a host and no credentials; plain http off this host is a warning."""
        url = self.text(node, path, max_chars=MAX_URL_CHARS)
        if url is None:
            return None
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a bad port
        except ValueError:
            parts = urlsplit("")
        if parts.scheme not in ("http", "https") or not parts.hostname or re.search(r"\s", url):
            self.error(node, path, f"{show(url)} is not an http:// or https:// URL")
            return None
        if parts.username is not None or parts.password is not None:
            self.error(node, path, "must not contain a user name or password")
            return None
        if parts.scheme == "http" and parts.hostname not in ("localhost", "127.0.0.1", "::1"):
            self.warn(node, path, "plain http: what is sent crosses the network unencrypted")
        return url
