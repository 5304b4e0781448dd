"""Errors every API layer maps to its own status codes (gRPC codes, HTTP statuses)."""

from __future__ import annotations


class OutpostError(Exception):
    """Base of the errors a caller is told about; the message is safe to show them."""


class InvalidArgument(OutpostError):
    """The request is malformed or asks for something out of range."""


class NotFound(OutpostError):
    """The request names something (a model alias) that does not exist."""


class ResourceExhausted(OutpostError):
    """A bounded resource (a request queue, a message size) is full or exceeded."""


class Unavailable(OutpostError):
    """The service cannot answer now (models still loading, shutting down)."""


class Conflict(OutpostError):
    """The change clashes with existing state (e.g. deleting a model that is assigned)."""


class InsufficientResources(OutpostError):
    """The target cannot hold what was asked (memory, VRAM, disk); the message has the numbers."""


class Unauthenticated(OutpostError):
    """The request carries no valid credentials (an inference key) where they are required."""


class PermissionDenied(OutpostError):
    """The caller may not do this: the routing policy refuses the request, with its reason."""
