"""access_token, status and the exceptions, against the real executable."""

from __future__ import annotations

import datetime
import json
import urllib.request

import pytest

import spotoken


def test_access_token_is_one_the_web_api_accepts(emulator):
    emulator.login()
    token = spotoken.access_token()
    with urllib.request.urlopen(emulator.get("/v1/me", token), timeout=30) as r:
        assert json.loads(r.read())["id"] == "alice"
    info = spotoken.Spotoken().token_info(min_valid=datetime.timedelta(minutes=1))
    assert info["access_token"] == token, "a fresh cached token is answered again"
    assert info["account"] == "default"
    assert "user-read-private" in info["scopes"]


def test_status_reports_the_account(emulator):
    emulator.login()
    s = spotoken.status()
    (account,) = s["accounts"]
    assert account["account"] == "default"
    assert account["user_id"] == "alice"
    assert account["state"] == "active"


def test_status_without_accounts_is_an_answer_not_an_error(emulator):
    assert spotoken.status()["accounts"] == []


def test_not_logged_in_raises_authorization_needed(emulator):
    with pytest.raises(spotoken.AuthorizationNeeded) as e:
        spotoken.access_token("nobody")
    assert e.value.exit_code == 3
    assert "spotoken login --account nobody" in str(e.value)


def test_a_revoked_login_raises_authorization_needed_without_the_token(emulator):
    emulator.login()
    old = spotoken.access_token()
    emulator.control("POST", "revoke", {})
    emulator.age()
    with pytest.raises(spotoken.AuthorizationNeeded) as e:
        spotoken.access_token()
    assert "invalid_grant" in str(e.value)
    assert old not in str(e.value) and old not in repr(e.value)
    assert emulator.refreshes() == {"invalid_grant": 1}


def test_rate_limited_refresh_raises_with_the_wait(emulator):
    emulator.login()
    emulator.age()
    emulator.control(
        "POST",
        "failures",
        {
            "endpoint": "token",
            "status": 429,
            "headers": {"Retry-After": "3600"},
            "body": {"error": "rate_limited"},
        },
    )
    with pytest.raises(spotoken.RateLimited) as e:
        spotoken.access_token()
    assert isinstance(e.value, spotoken.TemporaryFailure)
    assert e.value.exit_code == 4
    assert e.value.retry_after == 3600


def test_a_missing_scope_is_named(emulator):
    emulator.login("user-read-private")
    client = spotoken.Spotoken()
    client.check_scope("GET", "/v1/me")
    with pytest.raises(spotoken.InsufficientScope) as e:
        client.check_scope("GET", "/v1/me/playlists")
    assert e.value.exit_code == 5
    assert e.value.missing_scopes == ["playlist-read-private"]
    assert "playlist-read-private" in str(e.value)


def test_a_bad_duration_is_a_configuration_error(emulator):
    emulator.login()
    with pytest.raises(spotoken.ConfigurationError) as e:
        spotoken.access_token(min_valid="soon")
    assert e.value.exit_code == 2
    assert "soon" in str(e.value)


def test_a_missing_executable_is_a_configuration_error(tmp_path):
    client = spotoken.Spotoken(tmp_path / "no-such-spotoken")
    with pytest.raises(spotoken.ExecutableNotFound) as e:
        client.access_token()
    assert isinstance(e.value, spotoken.ConfigurationError)


def test_an_explicit_executable_and_home_are_used(emulator, monkeypatch):
    emulator.login()
    home = str(emulator.home)
    monkeypatch.delenv("SPOTOKEN_HOME")
    monkeypatch.setenv("PATH", "/nonexistent")
    client = spotoken.Spotoken(emulator.bin, home=home, account="default")
    assert client.access_token().startswith("BQ")


def test_token_like_text_is_scrubbed_from_messages():
    token = "BQ" + "x" * 200
    e = spotoken.UnexpectedFailure(f"the server sent {token}")
    assert token not in str(e) and "[redacted]" in str(e)
