"""tekore takes its tokens from spotoken: ``tekore.Spotify(TokenSource())``.

tekore reads a token as ``str(token)`` before every request, and accepts any
:class:`tekore.AccessToken`; :class:`TokenSource` is one whose value comes from
``spotoken token`` each time, so the executable refreshes (once, however many
threads and processes ask) and tekore never holds a refresh token. A login that
must be renewed raises :class:`spotoken.AuthorizationNeeded` out of the tekore
call.

:class:`Spotify` (a ``tekore.Spotify`` with a :class:`TokenSource`) also turns a
403 "Insufficient client scope" into :class:`InsufficientScope`, both a
:class:`spotoken.InsufficientScope` naming the scopes to add and the
``tekore.Forbidden`` tekore would have raised (synchronous senders only). Tested
with tekore 6.2.0.
"""

from __future__ import annotations

from typing import Any, Optional
from urllib.parse import urlsplit

import tekore as _tk

from . import errors
from ._client import MinValid, Spotoken

__all__ = ["TokenSource", "Spotify", "InsufficientScope"]


class TokenSource(_tk.AccessToken):
    """A tekore access token whose value is asked of the ``spotoken`` executable
    at each use (``account``, ``min_valid`` and ``client`` as in
    :class:`spotoken.spotipy.AuthManager`)."""

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
        return f"TokenSource(account={self.account!r})"

    @property
    def access_token(self) -> str:
        """A fresh access token."""
        return self.client.access_token(self.account, self.min_valid)

    @property
    def token_type(self) -> str:
        """How the token is used: always ``Bearer``."""
        return "Bearer"


class InsufficientScope(errors.InsufficientScope, _tk.Forbidden):
    """A 403 from the Web API for want of scopes: ``missing_scopes`` names them;
    ``request`` and ``response`` are tekore's."""

    def __init__(
        self, cause: errors.InsufficientScope, request: _tk.Request, response: _tk.Response
    ) -> None:
        errors.InsufficientScope.__init__(self, cause.message, missing_scopes=cause.missing_scopes)
        self.request = request
        self.response = response


class _ExplainingSender(_tk.ExtendingSender):
    def __init__(self, sender: Optional[_tk.Sender], source: TokenSource) -> None:
        super().__init__(sender)
        self.source = source

    def send(self, request: _tk.Request) -> Any:
        response = self.sender.send(request)
        if self.is_async or response.status_code != 403:
            return response
        try:
            self.source.client.check_scope(
                request.method, urlsplit(request.url).path, self.source.account
            )
        except errors.InsufficientScope as scope:
            raise InsufficientScope(scope, request, response) from None
        return response


class Spotify(_tk.Spotify):
    """``tekore.Spotify`` with a :class:`TokenSource`, whose 403s name the missing scopes.

    ``sender`` and other keyword arguments go to ``tekore.Spotify``.
    """

    def __init__(
        self,
        account: Optional[str] = None,
        *,
        min_valid: Optional[MinValid] = None,
        client: Optional[Spotoken] = None,
        sender: Optional[_tk.Sender] = None,
        **kwargs: Any,
    ) -> None:
        source = TokenSource(account, min_valid=min_valid, client=client)
        super().__init__(source, sender=_ExplainingSender(sender, source), **kwargs)
