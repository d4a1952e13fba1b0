"""spotipy takes its tokens from spotoken: ``spotipy.Spotify(auth_manager=AuthManager())``.

spotipy asks its auth manager for a token before every request
(``get_access_token(as_dict=False)``) and never shows it the response, so the
manager here is one ``spotoken token`` per request: the executable answers a
fresh cached token in about a millisecond and refreshes at most once however
many threads and processes ask after expiry. A login that must be renewed
raises :class:`spotoken.AuthorizationNeeded` out of the spotipy call.

Spotify's 403 says only "Insufficient client scope". :class:`Spotify` (a
``spotipy.Spotify`` with this manager) turns it into :class:`InsufficientScope`,
which is both a :class:`spotoken.InsufficientScope` naming the scopes to add and
the ``spotipy.SpotifyException`` spotipy would have raised. Tested with spotipy
2.26.0.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Union
from urllib.parse import urlsplit

import spotipy as _spotipy

from . import errors
from ._client import MinValid, Spotoken

__all__ = ["AuthManager", "Spotify", "InsufficientScope"]


class AuthManager:
    """A spotipy auth manager that asks the ``spotoken`` executable for each token.

    ``account`` defaults to spotoken's default account; ``min_valid`` to five
    minutes; ``client`` to a :class:`spotoken.Spotoken` running ``spotoken``
    from ``PATH``.
    """

    def __init__(
        self,
        account: Optional[str] = None,
        *,
        min_valid: Optional[MinValid] = None,
        client: Optional[Spotoken] = None,
    ) -> None:
        self.account = account
        self.min_valid = min_valid
        self.client = client if client is not None else Spotoken()

    def __repr__(self) -> str:
        return f"AuthManager(account={self.account!r})"

    def get_access_token(self, as_dict: bool = False) -> Union[str, Dict[str, Any]]:
        """The access token (what spotipy asks for), or with ``as_dict`` the
        token info in spotipy's shape, without a refresh token (spotoken keeps it)."""
        if not as_dict:
            return self.client.access_token(self.account, self.min_valid)
        info = self.client.token_info(self.account, self.min_valid)
        return {
            "access_token": info["access_token"],
            "token_type": info["token_type"],
            "expires_in": info["expires_in"],
            "expires_at": info["expires_at"],
            "scope": " ".join(info["scopes"]),
        }

    def explain_forbidden(self, method: str, path: str) -> None:
        """Raises :class:`spotoken.InsufficientScope` if the login lacks scopes for
        ``method path``; returns if spotoken knows of none missing."""
        self.client.check_scope(method, path, self.account)


class InsufficientScope(errors.InsufficientScope, _spotipy.SpotifyException):
    """A 403 from the Web API for want of scopes: ``missing_scopes`` names them;
    ``http_status``, ``msg`` and ``headers`` are spotipy's."""

    def __init__(self, cause: errors.InsufficientScope, http: _spotipy.SpotifyException) -> None:
        errors.InsufficientScope.__init__(self, cause.message, missing_scopes=cause.missing_scopes)
        self.http_status = http.http_status
        self.code = http.code
        self.msg = http.msg
        self.reason = http.reason
        self.headers = http.headers

    def __str__(self) -> str:
        return self.message


class Spotify(_spotipy.Spotify):
    """``spotipy.Spotify`` with :class:`AuthManager`, whose 403s name the missing scopes.

    Other keyword arguments go to ``spotipy.Spotify``.
    """

    def __init__(
        self,
        account: Optional[str] = None,
        *,
        min_valid: Optional[MinValid] = None,
        client: Optional[Spotoken] = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(
            auth_manager=AuthManager(account, min_valid=min_valid, client=client), **kwargs
        )

    def _internal_call(self, method: str, url: str, payload: Any, params: Any) -> Any:
        # spotipy has no response hook; this is its one request method.
        try:
            return super()._internal_call(method, url, payload, params)
        except _spotipy.SpotifyException as e:
            manager = self.auth_manager
            if e.http_status != 403 or not isinstance(manager, AuthManager):
                raise
            full = url if url.startswith("http") else self.prefix + url
            try:
                manager.explain_forbidden(method, urlsplit(full).path)
            except errors.InsufficientScope as scope:
                raise InsufficientScope(scope, e) from e
            raise
