"""spotipy with spotoken's auth manager, against the real executable and emulator."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import List

import pytest
import spotipy

import spotoken
import spotoken.spotipy

THREADS = 50
PROCESSES = 4


def client(emulator, **kwargs) -> spotipy.Spotify:
    sp = spotipy.Spotify(auth_manager=spotoken.spotipy.AuthManager(**kwargs), retries=0)
    sp.prefix = emulator.url + "/v1/"
    return sp


def test_spotipy_calls_the_web_api_with_spotokens_token(emulator):
    emulator.login("user-read-private,user-read-email")
    assert client(emulator).me()["id"] == "alice"
    info = spotoken.spotipy.AuthManager().get_access_token(as_dict=True)
    assert set(info) == {"access_token", "token_type", "expires_in", "expires_at", "scope"}
    assert "user-read-email" in info["scope"].split()


def test_threads_and_processes_after_expiry_make_one_refresh(emulator):
    emulator.settings(access_token_lifetime_secs=600, token_latency_ms=100)
    emulator.login()
    emulator.age()
    emulator.control("DELETE", "counters")
    worker = Path(__file__).with_name("spotipy_worker.py")
    procs = [
        subprocess.Popen(
            [sys.executable, str(worker), emulator.url, str(THREADS)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(PROCESSES)
    ]
    for p in procs:
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    ids: List[str] = []
    errors: List[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(THREADS + 1)

    def call() -> None:
        sp = client(emulator)
        ready.wait()
        try:
            me = sp.me()
            with lock:
                ids.append(me["id"])
        except Exception as e:
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=call) for _ in range(THREADS)]
    for t in threads:
        t.start()
    for p in procs:
        assert p.stdin is not None
        p.stdin.write("go\n")
        p.stdin.flush()
    ready.wait()
    for t in threads:
        t.join()
    for p in procs:
        out, _ = p.communicate(timeout=300)
        result = json.loads(out)
        ids += result["ids"]
        errors += result["errors"]
        assert p.returncode == 0

    calls = THREADS * (PROCESSES + 1)
    assert errors == [], f"{len(errors)} of {calls} calls failed: {sorted(set(errors))}"
    assert ids == ["alice"] * calls
    assert emulator.refreshes() == {"ok": 1}, "one refresh for every thread and process"
    assert emulator.api_statuses() == {"200": calls}, "no call used the expired token"


def test_a_revoked_login_raises_authorization_needed_from_spotipy(emulator):
    emulator.login()
    sp = client(emulator)
    old = sp.auth_manager.get_access_token()
    assert sp.me()["id"] == "alice"
    emulator.control("POST", "revoke", {})
    emulator.age()
    with pytest.raises(spotoken.AuthorizationNeeded) as e:
        sp.me()
    assert "spotoken login" in str(e.value)
    assert old not in str(e.value) and old not in repr(e.value)


def test_a_403_names_the_missing_scope(emulator):
    emulator.login("user-read-private")
    sp = spotoken.spotipy.Spotify(retries=0)
    sp.prefix = emulator.url + "/v1/"
    emulator.control("DELETE", "counters")
    assert sp.me()["id"] == "alice"
    with pytest.raises(spotoken.InsufficientScope) as e:
        sp.current_user_playlists()
    assert e.value.missing_scopes == ["playlist-read-private"]
    assert "playlist-read-private" in str(e.value)
    assert isinstance(e.value, spotipy.SpotifyException), "spotipy's own handlers still catch it"
    assert e.value.http_status == 403
    assert emulator.api_statuses() == {"200": 1, "403": 1}
