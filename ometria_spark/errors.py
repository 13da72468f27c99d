"""The client's errors, and an exception as the one line a run report or a quarantine row
shows."""

from __future__ import annotations

_MAX_REASON = 500


class OmetriaError(Exception):
    """Base class of every error raised by this client."""


class AuthError(OmetriaError):
    """The server refused the API key (HTTP 401 or 403)."""


class NotFoundError(OmetriaError):
    """The requested object does not exist (HTTP 404)."""


class ApiError(OmetriaError):
    """Retries exhausted, an unexpected status, or a body that is not a JSON array."""


def one_line(exc: BaseException, secret: str) -> str:
    """A short, secret-free reason; for JVM errors, the Java exception's own message."""
    java = getattr(exc, "java_exception", None)
    text = str(java.toString()) if java is not None else f"{type(exc).__name__}: {exc}"
    lines = [line for line in text.strip().splitlines() if line.strip()] or [type(exc).__name__]
    line = lines[0][:_MAX_REASON]
    # A safety net: the client never puts the key in a message. (Too short a value would
    # mask ordinary words, and no real key is that short.)
    return line.replace(secret, "***") if len(secret) >= 8 else line


def root_cause(exc: BaseException) -> str:
    """The telling line of a Spark/Java error (the root cause), not the whole stack."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    causes = [line for line in lines if "Exception:" in line or "Error:" in line]
    text = causes[-1] if causes else (lines[0] if lines else type(exc).__name__)
    return text[:_MAX_REASON]
