"""The REST client and terminal output shared by the `outpost` admin commands."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import httpx


class UsageError(Exception):
    """Bad command-line input found after argparse: exit status 2."""


class ApiFailure(Exception):
    """The control plane answered with an error, or could not be reached: exit status 1.

    `problems`: what an invalid routing policy's 422 lists ({path, line, column, message})."""

    def __init__(self, message: str, problems: Sequence[Mapping[str, Any]] = ()) -> None:
        super().__init__(message)
        self.problems = list(problems)


def label_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"invalid label {text!r}: use key=value")
    return key, value


class Client:
    """A thin REST client: JSON in and out, errors as ApiFailure with the server's message."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 15.0) -> None:
        self.url = url.rstrip("/")
        self._http = httpx.Client(
            timeout=timeout_s,
            headers={"Authorization": f"Bearer {api_key}", "Accept": "application/json"},
        )

    def close(self) -> None:
        self._http.close()

    def upload(
        self, path: str, blocks: Iterator[bytes], size: int, filename: str, **params: str | None
    ) -> Any:
        """POSTs `blocks` as a raw octet-stream body (streamed, never whole in memory)."""
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Length": str(size),
            "Content-Disposition": f'attachment; filename="{filename}"',
        }
        try:
            response = self._http.post(
                f"{self.url}/api/v1{path}",
                content=blocks,
                headers=headers,
                params={k: v for k, v in params.items() if v is not None} or None,
                timeout=httpx.Timeout(self._http.timeout.connect, read=None, write=None),
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiFailure(f"cannot reach the control plane at {self.url}: {exc}") from exc
        return self._answer(response)

    def call(self, method: str, path: str, body: object = None, **params: str | None) -> Any:
        try:
            response = self._http.request(
                method,
                f"{self.url}/api/v1{path}",
                json=body,
                params={k: v for k, v in params.items() if v is not None} or None,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiFailure(f"cannot reach the control plane at {self.url}: {exc}") from exc
        return self._answer(response)

    def send(
        self, method: str, path: str, content: bytes, content_type: str, **params: str | None
    ) -> Any:
        """Like `call`, with a body that is not JSON (a policy document)."""
        try:
            response = self._http.request(
                method,
                f"{self.url}/api/v1{path}",
                content=content,
                headers={"Content-Type": content_type},
                params={k: v for k, v in params.items() if v is not None} or None,
            )
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            raise ApiFailure(f"cannot reach the control plane at {self.url}: {exc}") from exc
        return self._answer(response)

    def _answer(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            raise ApiFailure(_error_message(response), _problems(response))
        if response.status_code == 204 or not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            raise ApiFailure(f"{self.url} did not answer with JSON: is it Outpost?") from None


def _problems(response: httpx.Response) -> list[Mapping[str, Any]]:
    try:
        problems = response.json()["error"]["problems"]
    except (ValueError, KeyError, TypeError):
        return []
    if not isinstance(problems, list):
        return []
    return [p for p in problems if isinstance(p, dict)]


def _error_message(response: httpx.Response) -> str:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = None
    if isinstance(message, str) and message:
        return message
    return f"HTTP {response.status_code} {response.reason_phrase}".strip()


def clean(value: object) -> str:
    """One table cell: no control characters reach the terminal."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    return "".join(c if c.isprintable() else "?" for c in text)


def labels_text(labels: Mapping[str, str] | None) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted((labels or {}).items())) or "-"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    cells = [[clean(c) or "-" for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [list(headers), *cells]:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def print_json(document: object) -> None:
    print(json.dumps(document, indent=2))


def segment(value: str) -> str:
    """One URL path segment: an id must not walk to another route."""
    if (
        not value
        or value in (".", "..")
        or any(c in value for c in "/?#%\\")
        or not value.isprintable()
    ):
        raise UsageError(f"invalid id {value!r}")
    return value
