"""Resolving a cloud target's `api_key_ref` ("env:NAME" or "file:/absolute/path") to its key."""

# The policy names where a key is, never the key itself (it is sent to every agent). A key is
# looked up on every call, so that a rotated key is used at once; the environment is a mapping
# the caller passes in (its settings), never os.environ read here.
#
# Key files: an absolute path; symbolic links are followed (Kubernetes mounts secrets through
# them) but the file itself must be a regular file of at most MAX_KEY_FILE_BYTES. A file that
# group or others may WRITE is refused: whoever can write it can swap in their own account's
# key and read what the target is sent on the provider's side. A file that others may read is
# accepted (Kubernetes mounts secrets 0644 by default), as ssh does not: the key is a
# credential for spending, and the agent's files are on a machine the organisation controls.
#
# A key must be printable ASCII without blanks (it goes into an HTTP header). Errors say what
# is wrong and never quote the key or any part of the file.

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

__all__ = ["MAX_KEY_FILE_BYTES", "KeyReferenceError", "resolve_api_key"]

MAX_KEY_FILE_BYTES = 4096
_ENV = "env:"
_FILE = "file:"
_MAX_QUOTED = 64  # characters of a reference or variable name quoted in an error


class KeyReferenceError(Exception):
    """The key cannot be resolved; the message never contains the key."""


def resolve_api_key(reference: str | None, environ: Mapping[str, str]) -> str | None:
    """The key `reference` points to; None when the target has no key reference."""
    if reference is None:
        return None
    if reference.startswith(_ENV):
        return _from_environment(reference[len(_ENV) :], environ)
    if reference.startswith(_FILE):
        return _from_file(reference[len(_FILE) :])
    raise KeyReferenceError(
        f"key reference {reference[:_MAX_QUOTED]!r} is neither env:NAME nor file:/path"
    )


def _from_environment(name: str, environ: Mapping[str, str]) -> str:
    quoted = repr(name[:_MAX_QUOTED])
    if not name:
        raise KeyReferenceError("key reference env: names no variable")
    value = environ.get(name)
    if value is None:
        raise KeyReferenceError(f"environment variable {quoted} is not set")
    return _checked(value, f"environment variable {quoted}")


def _from_file(path_text: str) -> str:
    path = Path(path_text)
    where = f"key file {path_text[:200]!r}"
    if not path.is_absolute():
        raise KeyReferenceError(f"{where} is not an absolute path")
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise KeyReferenceError(f"{where} cannot be opened: {exc.strerror}") from None
    try:
        status = os.fstat(descriptor)
        if not stat.S_ISREG(status.st_mode):
            raise KeyReferenceError(f"{where} is not a regular file")
        if status.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise KeyReferenceError(
                f"{where} may be written by group or others (mode "
                f"{stat.S_IMODE(status.st_mode):04o}): refused"
            )
        data = os.read(descriptor, MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise KeyReferenceError(f"{where} cannot be read: {exc.strerror}") from None
    finally:
        os.close(descriptor)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise KeyReferenceError(f"{where} is larger than {MAX_KEY_FILE_BYTES} bytes")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise KeyReferenceError(f"{where} is not ASCII text") from None
    return _checked(text, where)


def _checked(value: str, where: str) -> str:
    key = value.strip()
    if not key:
        raise KeyReferenceError(f"{where} is empty")
    if not all("!" <= character <= "~" for character in key):
        raise KeyReferenceError(
            f"{where} holds a character a key cannot have (blank, control or non-ASCII)"
        )
    return key
