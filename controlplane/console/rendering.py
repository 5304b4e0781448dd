"""Pages from Jinja2 templates (autoescaped), with the console's security headers."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from litestar import MediaType
from litestar.datastructures import Cookie
from litestar.response import Redirect, Response

PACKAGE_DIR = Path(__file__).parent
TEMPLATES_DIR = PACKAGE_DIR / "templates"
STATIC_DIR = PACKAGE_DIR / "static"
STATIC_PATH = "/console/static"

# No inline script or style anywhere: everything the pages load comes from this origin.
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS: Mapping[str, str] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def when(moment: datetime | None) -> str:
    """A time as the pages show it: UTC to the second, "-" for none."""
    if moment is None:
        return "-"
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


class Renderer:
    """Renders the package's templates; every value is HTML-escaped unless marked safe."""

    def __init__(self, templates_dir: Path = TEMPLATES_DIR) -> None:
        self._env = Environment(
            loader=FileSystemLoader(templates_dir),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self._env.filters["when"] = when
        self._env.globals["static"] = STATIC_PATH

    def html(self, template: str, **context: Any) -> str:
        return self._env.get_template(template).render(**context)

    def page(
        self,
        template: str,
        *,
        status: int = 200,
        cookies: Sequence[Cookie] = (),
        **context: Any,
    ) -> Response[str]:
        return Response(
            content=self.html(template, **context),
            status_code=status,
            media_type=MediaType.HTML,
            headers=dict(SECURITY_HEADERS),
            cookies=list(cookies),
        )


def redirect(path: str, *, cookies: Sequence[Cookie] = ()) -> Redirect:
    """303 See Other: after a form, the browser GETs `path`."""
    return Redirect(
        path=path, status_code=303, headers=dict(SECURITY_HEADERS), cookies=list(cookies)
    )
