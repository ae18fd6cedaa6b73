"""The domain errors: what went wrong with a request, or with the configuration, in the router's own terms.

The tree (the gRPC status each gets is mapped in server/status.py, the one place that knows about gRPC)::

    MessplusError                      per-request errors; raised bare: INTERNAL, with its message
    ├── InvalidArgument(field)         INVALID_ARGUMENT: a field of the request is wrong; names the field
    ├── NotFound                       NOT_FOUND: unknown request id (or another tenant's)
    ├── AlreadyExists                  ALREADY_EXISTS: a request id that was already routed
    ├── Conflict                       FAILED_PRECONDITION: write-once feedback given a different value
    ├── Unauthenticated                UNAUTHENTICATED: no or bad credentials
    ├── PermissionDenied               PERMISSION_DENIED: the caller may not act for that tenant
    ├── Overloaded                     RESOURCE_EXHAUSTED: admission control or a tenant's rate limit
    ├── NoModelAvailable               UNAVAILABLE: no zoo model can serve the request now
    ├── StorageUnavailable             UNAVAILABLE: the state store could not commit (disk full, I/O error)
    ├── Unsupported                    UNIMPLEMENTED: this router does not offer the call (Generate, Route-only)
    └── DeadlineTooShort               DEADLINE_EXCEEDED: the caller's deadline ran out before the work finished
    ConfigError(key)                   fatal at start-up: the configuration is wrong; names the key

Handlers raise these; the server's ErrorInterceptor turns them into statuses. Any other exception becomes
INTERNAL with a generic message (the stack trace goes to the log, never onto the wire). This module imports no
gRPC, so the router and the state store can raise these without depending on the transport.
"""

from __future__ import annotations


SHOWN_MAX = 80


def shown(value: str) -> str:
    """A caller's value quoted in an error message, cut to SHOWN_MAX characters: a message repeating a
    20,000-character tenant would overflow gRPC's metadata limit and reach the caller as RESOURCE_EXHAUSTED."""
    if len(value) <= SHOWN_MAX:
        return repr(value)
    return f"{value[:SHOWN_MAX]!r}... ({len(value)} characters)"


class MessplusError(Exception):
    """A per-request error with a message the caller can act on."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(MessplusError):
    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(MessplusError):
    pass


class AlreadyExists(MessplusError):
    pass


class Conflict(MessplusError):
    pass


class Unauthenticated(MessplusError):
    pass


class PermissionDenied(MessplusError):
    pass


class Overloaded(MessplusError):
    pass


class NoModelAvailable(MessplusError):
    pass


class StorageUnavailable(MessplusError):
    """The durable write failed, so nothing was applied or acknowledged; the caller may retry."""


class Unsupported(MessplusError):
    """The call exists but this router's configuration does not offer it (Generate on a Route-only router)."""


class DeadlineTooShort(MessplusError):
    pass


class ConfigError(Exception):
    """The configuration is wrong; the server must not start. The message names the key."""

    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config key '{key}': {problem}")
        self.key = key
        self.problem = problem
