"""Runs the ``spotoken`` executable and turns its answers into values or errors.

Every call is one ``spotoken`` process: ``spotoken token`` answers a fresh
cached token in about a millisecond, refreshes at most once across every
process and thread that asks at the same time (the executable holds the lock,
not this module), and keeps the tokens encrypted. Nothing is cached here, so a
``spotoken logout`` or a new login elsewhere is seen by the next call. Errors
are read from the executable's ``--output json`` error line on stderr.
"""

from __future__ import annotations

import datetime
import json
import math
import os
import shutil
import subprocess
import threading
from typing import Any, Dict, List, Optional, Sequence, TypedDict, Union

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

#: A validity a token must still have: seconds, a ``timedelta`` or what the
#: executable accepts (``"90s"``, ``"5m"``, ``"2h"``).
MinValid = Union[int, float, datetime.timedelta, str]


class TokenInfo(TypedDict):
    """What ``spotoken token --output json`` prints."""

    account: str
    access_token: str
    token_type: str
    expires_at: int
    expires_in: int
    scopes: List[str]


class Spotoken:
    """The ``spotoken`` executable, found on ``PATH`` or given.

    ``executable`` is a path or a command name (default ``spotoken``); ``home``
    and ``account`` are passed as ``--home`` and ``--account`` when set (the
    executable otherwise reads ``SPOTOKEN_HOME`` and ``SPOTOKEN_ACCOUNT`` and its
    config). ``timeout`` bounds each call in seconds; a call that runs past it
    raises :class:`TemporaryFailure`. Instances are safe to share between
    threads.
    """

    def __init__(
        self,
        executable: Optional[Union[str, "os.PathLike[str]"]] = None,
        *,
        home: Optional[Union[str, "os.PathLike[str]"]] = None,
        account: Optional[str] = None,
        timeout: Optional[float] = 60.0,
    ) -> None:
        self._executable = os.fspath(executable) if executable is not None else "spotoken"
        self._resolved: Optional[str] = None
        self._lock = threading.Lock()
        self.home = os.fspath(home) if home is not None else None
        self.account = account
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"Spotoken(executable={self._executable!r}, home={self.home!r}, account={self.account!r})"

    def access_token(
        self, account: Optional[str] = None, min_valid: Optional[MinValid] = None
    ) -> str:
        """A Spotify access token valid for at least ``min_valid`` (default: five minutes)."""
        return self.token_info(account, min_valid)["access_token"]

    def token_info(
        self, account: Optional[str] = None, min_valid: Optional[MinValid] = None
    ) -> TokenInfo:
        """The token with its expiry and scopes (``spotoken token --output json``)."""
        args = ["token"]
        if min_valid is not None:
            args += ["--min-valid", _duration_arg(min_valid)]
        out = self._run(args, account)
        try:
            info = json.loads(out)
        except ValueError:
            raise UnexpectedFailure("spotoken token printed something that is not JSON") from None
        if not isinstance(info, dict) or not isinstance(info.get("access_token"), str):
            raise UnexpectedFailure("spotoken token printed JSON without an access_token")
        return info  # type: ignore[return-value]

    def status(self) -> Dict[str, Any]:
        """Every account's user, scopes, expiries and state (``spotoken status --output json``).

        An account that needs a login is reported in its ``state``, not raised.
        """
        out = self._run(["status"], None, ok_codes=(0, 3))
        try:
            value = json.loads(out)
        except ValueError:
            raise UnexpectedFailure("spotoken status printed something that is not JSON") from None
        if not isinstance(value, dict):
            raise UnexpectedFailure("spotoken status printed JSON that is not an object")
        return value

    def check_scope(self, method: str, path: str, account: Optional[str] = None) -> None:
        """Raises :class:`InsufficientScope` naming the scopes the login lacks for
        ``method path`` (such as ``GET /v1/me/playlists``); returns when none are
        missing or the endpoint is not in spotoken's table. No network."""
        self._run(["check-scope", method, path], account)

    def executable(self) -> str:
        """The path of the executable this instance runs."""
        with self._lock:
            if self._resolved is None:
                found = shutil.which(self._executable)
                if found is None:
                    raise ExecutableNotFound(
                        f"cannot find the spotoken executable ({self._executable!r}) on PATH: "
                        "install spotoken (README: Install) or pass executable="
                    )
                self._resolved = found
            return self._resolved

    def _run(
        self, args: List[str], account: Optional[str], ok_codes: Sequence[int] = (0,)
    ) -> str:
        cmd = [self.executable(), *args, "--output", "json"]
        account = account if account is not None else self.account
        if account is not None:
            cmd += ["--account", account]
        if self.home is not None:
            cmd += ["--home", self.home]
        try:
            done = subprocess.run(
                cmd,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise TemporaryFailure(
                f"spotoken {args[0]} did not answer within {self.timeout} s"
            ) from None
        except OSError as e:
            raise ExecutableNotFound(f"cannot run {cmd[0]}: {e.strerror}") from None
        if done.returncode in ok_codes:
            return done.stdout.decode("utf-8", "replace")
        raise _error(done.returncode, done.stderr.decode("utf-8", "replace"))


def _duration_arg(d: MinValid) -> str:
    if isinstance(d, str):
        return d
    seconds = d.total_seconds() if isinstance(d, datetime.timedelta) else float(d)
    if seconds < 0 or math.isnan(seconds):
        raise ValueError("min_valid must not be negative")
    return str(math.ceil(seconds))


_BY_CODE = {
    2: ConfigurationError,
    3: AuthorizationNeeded,
    4: TemporaryFailure,
    5: InsufficientScope,
}


def _error(code: int, stderr: str) -> SpotokenError:
    """The exception for an exit code and what the executable said on stderr
    (its JSON error line when there is one, else its last lines of text)."""
    detail: Dict[str, Any] = {}
    for line in reversed(stderr.splitlines()):
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(value.get("error"), dict):
            detail = value["error"]
            break
    message = detail.get("message")
    if not isinstance(message, str) or not message:
        lines = [l for l in stderr.strip().splitlines() if l.strip()]
        message = "\n".join(lines[-3:]) or f"spotoken exited with code {code}"
    if code < 0:
        return UnexpectedFailure(f"spotoken was killed by signal {-code}", exit_code=code)
    cls = _BY_CODE.get(code, UnexpectedFailure)
    if cls is TemporaryFailure:
        wait = detail.get("retry_after")
        if isinstance(wait, (int, float)):
            return RateLimited(message, retry_after=float(wait))
        return TemporaryFailure(message)
    if cls is InsufficientScope:
        missing = detail.get("missing_scopes")
        scopes = [s for s in missing if isinstance(s, str)] if isinstance(missing, list) else []
        return InsufficientScope(message, missing_scopes=scopes)
    return cls(message, exit_code=code)
