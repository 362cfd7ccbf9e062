"""Errors: every API error becomes a :class:`SandgateError` (or a subclass
chosen by HTTP status) carrying the API's ``code`` and ``message``."""

from __future__ import annotations

from typing import Any, Dict, Optional


class SandgateError(Exception):
    """An error from sandgate: its HTTP status (0 when the server did not
    answer), its stable ``code`` and a ``message`` for a person."""

    def __init__(
        self,
        message: str,
        code: str = "error",
        status: int = 0,
        details: Optional[Dict[str, Any]] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.status = status
        self.details: Dict[str, Any] = details or {}
        # Seconds the server asked to wait before sending the same request
        # again (``Retry-After``, on a 429 or a 503 that did nothing).
        self.retry_after: Optional[int] = None

    def __str__(self) -> str:
        return self.message


class ValidationError(SandgateError):
    """400 or 422: the request is malformed (bad lists, names, fields)."""


class AuthenticationError(SandgateError):
    """401: no key, or an unknown or revoked one."""


class PermissionDeniedError(SandgateError):
    """403: not allowed (an admin route, or a list the tier refuses)."""


class NotFoundError(SandgateError):
    """404: no such sandbox (or not this organization's)."""


class ConflictError(SandgateError):
    """409: a name taken, a quota reached, a sandbox not running."""


class PayloadTooLargeError(SandgateError):
    """413: the request body is over the server's limit."""


class RateLimitError(SandgateError):
    """429: too many commands running at once."""


class ServerError(SandgateError):
    """5xx: the server failed; the message carries an id for its log."""


class APIConnectionError(SandgateError):
    """The server did not answer (refused, unreachable, timed out)."""


def error_for(status: int, code: str, message: str, details: Dict[str, Any]) -> SandgateError:
    """The error class for an HTTP status."""
    cls: type[SandgateError]
    if status in (400, 422):
        cls = ValidationError
    elif status == 401:
        cls = AuthenticationError
    elif status == 403:
        cls = PermissionDeniedError
    elif status == 404:
        cls = NotFoundError
    elif status == 409:
        cls = ConflictError
    elif status == 413:
        cls = PayloadTooLargeError
    elif status == 429:
        cls = RateLimitError
    elif status >= 500:
        cls = ServerError
    else:
        cls = SandgateError
    return cls(message, code=code, status=status, details=details)
