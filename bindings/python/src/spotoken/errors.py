"""The errors spotoken reports, one class per exit code of the executable.

The ``spotoken`` command exits 2 for a configuration error, 3 when the user has
to log in again, 4 for a temporary failure (with the wait, when the server gave
one) and 5 when the login lacks a scope (naming the scopes to add). Each class
here mirrors one of those, so a program can ``except AuthorizationNeeded``
instead of reading exit codes. No message ever carries a token: the executable
redacts them, and :func:`_scrub` cuts anything token-shaped that got through.
"""

from __future__ import annotations

import re
from typing import List, Optional, Sequence

__all__ = [
    "SpotokenError",
    "ConfigurationError",
    "ExecutableNotFound",
    "AuthorizationNeeded",
    "TemporaryFailure",
    "RateLimited",
    "InsufficientScope",
    "UnexpectedFailure",
]

# Spotify's tokens are long base64url runs; nothing a person needs to read in
# an error message is.
_TOKEN_LIKE = re.compile(r"[A-Za-z0-9_\-]{60,}")


def _scrub(text: str) -> str:
    return _TOKEN_LIKE.sub("[redacted]", text)


class SpotokenError(Exception):
    """Any failure of the ``spotoken`` executable.

    ``exit_code`` is the executable's exit code and ``message`` what it said.
    """

    exit_code: int = 1

    def __init__(self, message: str, *, exit_code: Optional[int] = None) -> None:
        self.message = _scrub(message)
        if exit_code is not None:
            self.exit_code = exit_code
        # Not super(): the spotipy and tekore subclasses also derive from
        # their libraries' exceptions, whose constructors take other arguments.
        Exception.__init__(self, self.message)


class ConfigurationError(SpotokenError):
    """Exit code 2: a setting is wrong (client id, URL, key, usage); no login fixes it."""

    exit_code = 2


class ExecutableNotFound(ConfigurationError):
    """The ``spotoken`` executable is neither on ``PATH`` nor where it was said to be."""


class AuthorizationNeeded(SpotokenError):
    """Exit code 3: the user must log in again (``spotoken login``)."""

    exit_code = 3


class TemporaryFailure(SpotokenError):
    """Exit code 4: the network, Spotify or a lock failed for now; try again later.

    ``retry_after`` is the wait in seconds the server asked for, or ``None``.
    """

    exit_code = 4

    def __init__(
        self,
        message: str,
        *,
        retry_after: Optional[float] = None,
        exit_code: Optional[int] = None,
    ) -> None:
        super().__init__(message, exit_code=exit_code)
        self.retry_after = retry_after


class RateLimited(TemporaryFailure):
    """A temporary failure with a known wait (Spotify's 429 and its ``Retry-After``).

    ``retry_after`` is never ``None`` here.
    """

    retry_after: float


class InsufficientScope(SpotokenError):
    """Exit code 5: the login lacks scopes; ``missing_scopes`` names the ones to add.

    Log in again with them: ``spotoken login --scopes <current>,<missing>``.
    """

    exit_code = 5

    def __init__(
        self,
        message: str,
        *,
        missing_scopes: Sequence[str] = (),
        exit_code: Optional[int] = None,
    ) -> None:
        super().__init__(message, exit_code=exit_code)
        self.missing_scopes: List[str] = list(missing_scopes)


class UnexpectedFailure(SpotokenError):
    """Exit code 1 (or a signal): a protocol error, a bug or a broken machine."""

    exit_code = 1
