"""Fresh Spotify access tokens for Python, from the ``spotoken`` executable.

Log in once with ``spotoken login``; then::

    import spotoken
    token = spotoken.access_token()                 # valid for five more minutes
    token = spotoken.access_token("work", min_valid=600)

spotipy and tekore take their tokens from it with
``spotoken.spotipy.AuthManager`` and ``spotoken.tekore.TokenSource``. Failures
raise the exception matching the executable's exit code (see
:mod:`spotoken.errors`); no exception text ever holds a token.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from ._client import MinValid, Spotoken, TokenInfo
from .errors import (
    AuthorizationNeeded,
    ConfigurationError,
    ExecutableNotFound,
    InsufficientScope,
    RateLimited,
    SpotokenError,
    TemporaryFailure,
    UnexpectedFailure,
)

__all__ = [
    "access_token",
    "status",
    "Spotoken",
    "TokenInfo",
    "MinValid",
    "SpotokenError",
    "ConfigurationError",
    "ExecutableNotFound",
    "AuthorizationNeeded",
    "TemporaryFailure",
    "RateLimited",
    "InsufficientScope",
    "UnexpectedFailure",
]

__version__ = "0.1.0"

_default = Spotoken()


def access_token(account: Optional[str] = None, min_valid: Optional[MinValid] = None) -> str:
    """A Spotify access token for ``account`` (default: the configured default
    account) valid for at least ``min_valid`` (seconds, a ``timedelta`` or
    ``"5m"``; default five minutes), from the ``spotoken`` on ``PATH``."""
    return _default.access_token(account, min_valid)


def status() -> Dict[str, Any]:
    """Every account's state, as ``spotoken status --output json`` prints it."""
    return _default.status()
