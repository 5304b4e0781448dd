"""Sensitive-data detectors of the routing policy: built-in recognizers, keywords, own regexes."""

# A request's prompt is prepared once (`prepare`: NFKC and other normalisation, offsets mapped
# back, base64 runs decoded) and every detector reads that. `scan` runs a policy's detectors
# and never raises: a detector that raises or times out is reported as a DetectorFailure, so
# that the caller can treat the request as the highest level (design principle 4, fail
# closed). Findings carry offsets into the original prompt, never the matched text, so that
# they can be logged.

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import regex

from common.policy.detector_kinds import BUILTIN_DETECTOR_KINDS
from common.policy.prepared_text import PreparedText, prepare
from common.policy.recognizers import RECOGNIZERS, Recognizer
from common.policy.text_normalization import normalize_fragment

__all__ = [
    "MAX_FINDINGS_PER_DETECTOR",
    "Detector",
    "DetectorFailure",
    "DetectorTimeout",
    "Finding",
    "PreparedText",
    "Scan",
    "builtin_detector",
    "keyword_detector",
    "prepare",
    "regex_detector",
    "scan",
]

# One finding is enough to raise a request's level; more only explain it. Past this many a
# detector's findings are not collected (a prompt of 100,000 numbers stays cheap to report).
MAX_FINDINGS_PER_DETECTOR = 100
_MAX_REASON_LENGTH = 160


@dataclass(frozen=True)
class Finding:
    detector: str  # the detector's name (a policy's own name for it, e.g. "cards")
    kind: str  # "payment_card", "keyword", "regex", ... (the recognizer)
    level: str  # the level this detector raises a request to
    start: int  # character offsets into the ORIGINAL text given to scan()
    end: int  # (never the matched value itself: findings are logged/explained)


@dataclass(frozen=True)
class DetectorFailure:
    detector: str
    reason: str  # e.g. "timed out after 50 ms", "ValueError: ..."


@dataclass(frozen=True)
class Scan:
    findings: tuple[Finding, ...]
    failures: tuple[DetectorFailure, ...]


class Detector(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def level(self) -> str: ...

    def find(self, text: PreparedText) -> Iterable[Finding]: ...


class DetectorTimeout(Exception):
    """A detector gave up at its time limit; the message is the failure's reason."""


def _check_label(what: str, value: object) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"a detector's {what} must be a non-empty string, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class _BuiltinDetector:
    name: str
    level: str
    kind: str
    recognize: Recognizer = field(repr=False, compare=False)

    def find(self, text: PreparedText) -> Iterator[Finding]:
        for start, end in self.recognize(text):
            orig_start, orig_end = text.original_span(start, end)
            yield Finding(self.name, self.kind, self.level, orig_start, orig_end)


def builtin_detector(kind: str, *, name: str, level: str) -> Detector:
    """A built-in recognizer (a kind of common.policy.detector_kinds.BUILTIN_DETECTOR_KINDS)
    under a policy's name for it, raising requests to `level`."""
    recognizer = RECOGNIZERS.get(kind) if kind in BUILTIN_DETECTOR_KINDS else None
    if recognizer is None:
        known = ", ".join(BUILTIN_DETECTOR_KINDS)
        raise ValueError(f"unknown built-in detector kind {kind!r} (known: {known})")
    return _BuiltinDetector(
        _check_label("name", name), _check_label("level", level), kind, recognizer
    )


# Each keyword is one search for its literal first characters (as fast as `in`); with more
# keywords than this, only those whose first word is among the text's words are searched.
_MAX_KEYWORD_SEARCHES = 12
_WORD = re.compile(r"\w+")


@dataclass(frozen=True, slots=True)
class _Keyword:
    pattern: re.Pattern[str]  # starts with the keyword's literal text: a fast search
    first_word: str | None  # its first part when that is a whole word, for the word filter
    whole_word_start: bool  # must not follow a word character


def _word_character(char: str) -> bool:
    return char.isalnum() or char == "_"


class _KeywordDetector:
    """Whole words and phrases; phrase words may be split by any whitespace (also newlines),
    hyphens or underscores. Matched against the normalised text (lowered unless
    case-sensitive), so zero-width characters, full-width letters and mixed case do not hide a
    word."""

    __slots__ = ("_case_sensitive", "_filter_by_words", "_keywords", "level", "name")

    def __init__(self, name: str, words: Sequence[str], level: str, case_sensitive: bool) -> None:
        self.name = _check_label("name", name)
        self.level = _check_label("level", level)
        if isinstance(words, str):
            raise TypeError("keyword_detector takes a sequence of words, not one string")
        self._case_sensitive = case_sensitive
        keywords: dict[str, _Keyword] = {}
        for word in words:
            if not isinstance(word, str):
                raise TypeError(f"keywords are strings, not {type(word).__name__}")
            normalized = normalize_fragment(word)
            parts = (normalized if case_sensitive else normalized.lower()).split()
            if not parts:
                raise ValueError(f"detector {name!r}: empty keyword {word!r}")
            body = r"[\s_-]+".join(re.escape(part) for part in parts)
            if _WORD.match(parts[-1][-1]):
                body += r"(?!\w)"
            keywords[body] = _Keyword(
                re.compile(body),
                parts[0] if _WORD.fullmatch(parts[0]) else None,
                _WORD.match(parts[0][0]) is not None,
            )
        if not keywords:
            raise ValueError(f"detector {name!r}: no keywords")
        self._keywords = tuple(keywords.values())
        self._filter_by_words = len(keywords) > _MAX_KEYWORD_SEARCHES

    def find(self, text: PreparedText) -> Iterator[Finding]:
        haystack = text.normalized if self._case_sensitive else text.lowered
        keywords: Sequence[_Keyword] = self._keywords
        if self._filter_by_words:
            present = set(_WORD.findall(haystack))
            keywords = [k for k in keywords if k.first_word is None or k.first_word in present]
        spans = []
        for keyword in keywords:
            for match in keyword.pattern.finditer(haystack):
                start = match.start()
                if keyword.whole_word_start and start > 0 and _word_character(haystack[start - 1]):
                    continue
                spans.append(match.span())
        spans.sort(key=lambda span: (span[0], -span[1]))
        covered = -1
        for start, end in spans:
            if end <= covered:  # inside a longer keyword found at or before its start
                continue
            covered = end
            orig_start, orig_end = text.original_span(start, end)
            yield Finding(self.name, "keyword", self.level, orig_start, orig_end)


def keyword_detector(
    name: str, words: Sequence[str], *, level: str, case_sensitive: bool = False
) -> Detector:
    """A detector of whole words/phrases (case-insensitive unless `case_sensitive`)."""
    return _KeywordDetector(name, words, level, case_sensitive)


class _RegexDetector:
    """A policy's own pattern, compiled with the `regex` package and run on the normalised text
    with a time limit: a catastrophic pattern costs a request at most `timeout_s` (per text
    layer) and is reported, never hangs it."""

    __slots__ = ("_pattern", "_timeout_s", "level", "name")

    def __init__(self, name: str, pattern: str, level: str, timeout_s: float) -> None:
        self.name = _check_label("name", name)
        self.level = _check_label("level", level)
        if not isinstance(pattern, str) or not pattern:
            raise ValueError(f"detector {name!r}: the pattern must be a non-empty string")
        if not timeout_s > 0:
            raise ValueError(f"detector {name!r}: timeout_s must be positive, not {timeout_s!r}")
        try:
            self._pattern = regex.compile(pattern)
        except regex.error as exc:
            raise ValueError(f"detector {name!r}: invalid pattern: {exc}") from exc
        self._timeout_s = timeout_s

    def find(self, text: PreparedText) -> Iterator[Finding]:
        spans: list[tuple[int, int]] = []
        try:
            for match in self._pattern.finditer(text.normalized, timeout=self._timeout_s):
                start, end = match.span()
                if end > start:
                    spans.append((start, end))
                    if len(spans) >= MAX_FINDINGS_PER_DETECTOR:
                        break
        except TimeoutError as exc:
            raise DetectorTimeout(f"timed out after {self._timeout_s * 1000:g} ms") from exc
        for start, end in spans:
            orig_start, orig_end = text.original_span(start, end)
            yield Finding(self.name, "regex", self.level, orig_start, orig_end)


def regex_detector(name: str, pattern: str, *, level: str, timeout_s: float = 0.05) -> Detector:
    """A detector of a custom pattern (`regex` syntax, matched against the normalised text);
    an invalid pattern raises ValueError here, a timeout while scanning is a DetectorFailure."""
    return _RegexDetector(name, pattern, level, timeout_s)


def _describe(exc: BaseException) -> str:
    message = str(exc)
    reason = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    if len(reason) > _MAX_REASON_LENGTH:
        reason = reason[: _MAX_REASON_LENGTH - 3] + "..."
    return reason


def _name_of(detector: Detector) -> str:
    try:
        return str(detector.name)
    except Exception:
        return "<unnamed detector>"


def _text_layers(prepared: PreparedText) -> list[PreparedText]:
    """The prompt and the text of its base64 runs (and of base64 inside those)."""
    layers = [prepared]
    decoded = prepared.decoded()
    while decoded is not None:
        layers.append(decoded)
        decoded = decoded.decoded()
    return layers


def scan(text: str, detectors: Sequence[Detector]) -> Scan:
    """Run `detectors` over `text` and its decoded layers. Never raises: every exception or
    timeout of a detector (or of preparing the text) becomes a DetectorFailure, and a request
    with failures must be treated as the highest level."""
    try:
        prepared = prepare(text)
    except Exception as exc:
        reason = f"preparing the text failed: {_describe(exc)}"
        return Scan((), tuple(DetectorFailure(_name_of(d), reason) for d in detectors))
    layers_failure = None
    try:
        layers = _text_layers(prepared)
    except Exception as exc:
        layers = [prepared]
        layers_failure = f"decoding base64 in the text failed: {_describe(exc)}"
    length = len(text)
    findings: list[Finding] = []
    failures: list[DetectorFailure] = []
    for detector in detectors:
        found = 0
        try:
            for layer in layers:
                for finding in detector.find(layer):
                    if not isinstance(finding, Finding):
                        raise TypeError(f"find() yielded a {type(finding).__name__}")
                    if not 0 <= finding.start <= finding.end <= length:
                        raise ValueError("a finding's span lies outside the text")
                    findings.append(finding)
                    found += 1
                    if found >= MAX_FINDINGS_PER_DETECTOR:
                        break
                if found >= MAX_FINDINGS_PER_DETECTOR:
                    break
        except DetectorTimeout as exc:
            failures.append(DetectorFailure(_name_of(detector), str(exc)))
        except Exception as exc:
            failures.append(DetectorFailure(_name_of(detector), _describe(exc)))
        if layers_failure is not None:
            failures.append(DetectorFailure(_name_of(detector), layers_failure))
    return Scan(tuple(findings), tuple(failures))
