"""tekore with spotoken's token source, against the real executable and emulator."""

from __future__ import annotations

import pytest
import tekore
import tekore._client.base

import spotoken
import spotoken.tekore


def me(sp: tekore.Spotify) -> str:
    """GET /v1/me through tekore's own sending path (its PrivateUser model wants
    fields the emulator's /v1/me lacks, so the raw response is read)."""
    response = sp.send(tekore.Request("GET", "me"))
    assert response.status_code == 200, response.content
    return response.content["id"]


@pytest.fixture
def api(emulator, monkeypatch):
    # tekore has no URL setting; its requests go to this module global.
    monkeypatch.setattr(tekore._client.base, "prefix", emulator.url + "/v1/")
    return emulator


def test_tekore_calls_the_web_api_with_spotokens_token(api):
    api.login()
    source = spotoken.tekore.TokenSource()
    assert me(tekore.Spotify(source)) == "alice"
    assert "account" in repr(source) and source.access_token not in repr(tekore.Spotify(source))


def test_tekore_after_expiry_refreshes_once(api):
    api.login()
    sp = tekore.Spotify(spotoken.tekore.TokenSource())
    api.age()
    api.control("DELETE", "counters")
    assert [me(sp) for _ in range(3)] == ["alice"] * 3
    assert api.refreshes() == {"ok": 1}
    assert api.api_statuses() == {"200": 3}


def test_a_revoked_login_raises_authorization_needed_from_tekore(api):
    api.login()
    sp = tekore.Spotify(spotoken.tekore.TokenSource())
    api.control("POST", "revoke", {})
    api.age()
    with pytest.raises(spotoken.AuthorizationNeeded):
        sp.current_user()
    assert api.refreshes() == {"invalid_grant": 1}


def test_a_403_names_the_missing_scope(api):
    api.login("user-read-private")
    sp = spotoken.tekore.Spotify()
    assert me(sp) == "alice"
    with pytest.raises(spotoken.InsufficientScope) as e:
        sp.followed_playlists()
    assert isinstance(e.value, tekore.Forbidden)
    assert e.value.missing_scopes == ["playlist-read-private"]
