"""The real ``spotoken`` executable against its Spotify emulator, with a fresh home.

``SPOTOKEN_BIN`` names the executable under test (``bindings/python/run-tests``
sets it to the workspace's build); its directory goes first on ``PATH`` so the
binding's default lookup finds it. Each test gets its own emulator
(``spotoken emulate --port 0``) and home; the environment variables below reach
every ``spotoken`` process the binding starts, in this process and in workers.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

CLIENT_ID = "spotoken-emulator-client"


def _bin() -> str:
    path = os.environ.get("SPOTOKEN_BIN")
    if not path:
        raise RuntimeError("set SPOTOKEN_BIN to the spotoken executable under test")
    return str(Path(path).resolve())


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_browser = urllib.request.build_opener(_NoRedirect)


class Emulator:
    """A running ``spotoken emulate`` and its control plane (``/_emulator/*``)."""

    def __init__(self, home: Path) -> None:
        self.bin = _bin()
        self.home = home
        self.proc = subprocess.Popen(
            [self.bin, "emulate", "--port", "0", "--output", "json"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        assert self.proc.stdout is not None
        self.url: str = json.loads(self.proc.stdout.readline())["url"].rstrip("/")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)

    def control(self, method: str, path: str, body: Optional[Any] = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            f"{self.url}/_emulator/{path}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read() or b"null")

    def settings(self, **changes: Any) -> None:
        self.control("PATCH", "settings", changes)

    def counters(self) -> Dict[str, Any]:
        return self.control("GET", "counters")

    def refreshes(self) -> Dict[str, int]:
        """Refresh requests by outcome (``ok``, ``invalid_grant``, ...)."""
        return dict(self.counters()["token_requests"].get("refresh_token", {}))

    def api_statuses(self) -> Dict[str, int]:
        return dict(self.counters()["api_requests"])

    def login(self, scopes: str = "user-read-private") -> None:
        """``spotoken login --no-browser``, with this test as the browser (the
        emulator consents at once)."""
        proc = subprocess.Popen(
            [self.bin, "login", "--no-browser", "--timeout", "30s", "--scopes", scopes],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert proc.stderr is not None
        seen: List[str] = []
        for line in proc.stderr:
            seen.append(line)
            if line.startswith("http") and "/authorize?" in line:
                break
        else:
            raise AssertionError("login printed no URL: " + "".join(seen))
        try:
            _browser.open(line.strip(), timeout=30)
            raise AssertionError("the authorize URL did not redirect")
        except urllib.error.HTTPError as e:
            assert e.code in (302, 303), e.code
            callback = e.headers["Location"]
        with urllib.request.urlopen(callback, timeout=30) as page:
            page.read()
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, "".join(seen) + err

    def age(self) -> None:
        """Every access token is expired, at the emulator and in the store (the
        executable's clock cannot be moved, so its row is)."""
        self.control("POST", "expire-access-tokens")
        with sqlite3.connect(self.home / "tokens.db") as db:
            db.execute("UPDATE accounts SET access_expires_at = ?", (int(time.time()) - 1,))

    def get(self, path: str, token: str) -> urllib.request.Request:
        return urllib.request.Request(
            f"{self.url}{path}", headers={"Authorization": f"Bearer {token}"}
        )


@pytest.fixture
def emulator(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    for k in list(os.environ):
        if k.startswith("SPOTOKEN_") and k != "SPOTOKEN_BIN":
            monkeypatch.delenv(k)
    home = tmp_path / "home"
    home.mkdir()
    emu = Emulator(home)
    monkeypatch.setenv("SPOTOKEN_HOME", str(home))
    monkeypatch.setenv("SPOTOKEN_CLIENT_ID", CLIENT_ID)
    monkeypatch.setenv("SPOTOKEN_ACCOUNTS_URL", emu.url)
    monkeypatch.setenv("SPOTOKEN_API_URL", emu.url)
    monkeypatch.setenv("PATH", str(Path(emu.bin).parent) + os.pathsep + os.environ["PATH"])
    try:
        yield emu
    finally:
        emu.close()
