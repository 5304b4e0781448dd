"""The console ships every asset in the package (air-gapped sites): nothing from outside."""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatch
from pathlib import Path

from controlplane.console.rendering import PACKAGE_DIR, STATIC_DIR, TEMPLATES_DIR

ROOT = Path(__file__).resolve().parents[2]
# src=, href=, action=, url(...) or an import that leaves this origin
EXTERNAL = re.compile(
    r"""(?:src|href|action)\s*=\s*["']?(?:https?:)?//|url\(\s*["']?(?:https?:)?//|@import"""
)


def console_files() -> list[Path]:
    return sorted(p for d in (TEMPLATES_DIR, STATIC_DIR) for p in d.rglob("*") if p.is_file())


def test_no_template_or_asset_loads_anything_from_outside() -> None:
    files = console_files()
    assert files
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert EXTERNAL.search(text) is None, path
        assert "fonts.googleapis" not in text, path


def test_every_template_and_asset_is_package_data() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    tool = config["tool"]["setuptools"]
    assert "controlplane.console" in tool["packages"]
    patterns = tool["package-data"]["controlplane.console"]
    for path in console_files():
        relative = path.relative_to(PACKAGE_DIR).as_posix()
        assert any(fnmatch(relative, pattern) for pattern in patterns), relative


def test_no_template_holds_inline_script_or_style() -> None:
    for path in TEMPLATES_DIR.glob("*.html"):
        text = path.read_text(encoding="utf-8")
        assert re.search(r"<script(?![^>]*\bsrc=)", text) is None, path
        assert "<style" not in text, path
        assert re.search(r"\sstyle=", text) is None, path
        assert re.search(r"\son[a-z]+=", text) is None, path  # onclick= and the like
        assert "|safe" not in text, path  # nothing bypasses autoescaping
