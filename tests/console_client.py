"""A console user over plain HTTP (httpx): logs in with the login form and posts forms with
the session's CSRF token; cookies are kept by hand (they are Secure, the server is plain HTTP)."""

from __future__ import annotations

import re
from http.cookies import SimpleCookie

import httpx

_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')


def csrf_token(html: str) -> str:
    match = _CSRF.search(html)
    assert match is not None, f"no CSRF token in the page: {html[:500]}"
    return match.group(1)


def cookies_set(response: httpx.Response) -> dict[str, str]:
    """name -> value of every Set-Cookie in the response."""
    jar: dict[str, str] = {}
    for header in response.headers.get_list("set-cookie"):
        parsed: SimpleCookie = SimpleCookie()
        parsed.load(header)
        jar.update({name: morsel.value for name, morsel in parsed.items()})
    return jar


class ConsoleClient:
    """One browser-like user of the console at `base_url`."""

    def __init__(self, base_url: str) -> None:
        self.http = httpx.Client(base_url=base_url, timeout=30, follow_redirects=False)
        self.cookies: dict[str, str] = {}

    def close(self) -> None:
        self.http.close()

    def _cookie_header(self) -> dict[str, str]:
        if not self.cookies:
            return {}
        return {"Cookie": "; ".join(f"{k}={v}" for k, v in self.cookies.items())}

    def _keep(self, response: httpx.Response) -> httpx.Response:
        for name, value in cookies_set(response).items():
            if value:
                self.cookies[name] = value
            else:
                self.cookies.pop(name, None)
        return response

    def get(self, path: str) -> httpx.Response:
        return self._keep(self.http.get(path, headers=self._cookie_header()))

    def post(
        self, path: str, data: dict[str, str] | None = None, **kwargs: object
    ) -> httpx.Response:
        headers = {**self._cookie_header(), **dict(kwargs.pop("headers", {}) or {})}  # type: ignore[call-overload]
        return self._keep(self.http.post(path, data=data, headers=headers, **kwargs))  # type: ignore[arg-type]

    def login(self, name: str, password: str) -> httpx.Response:
        token = csrf_token(self.get("/login").text)
        return self.post("/login", {"csrf_token": token, "name": name, "password": password})

    def page_token(self, path: str = "/") -> str:
        """The CSRF token the forms of `path` carry."""
        return csrf_token(self.get(path).text)
