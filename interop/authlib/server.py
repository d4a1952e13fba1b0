"""Authlib (with Flask) as an OAuth 2.0 authorization server on a loopback
port, for spotoken's interop tests: a public client with PKCE (S256)
required, the code and refresh grants with rotation, RFC 7009 revocation and
an RFC 8414 discovery document. Storage is in memory (Authlib leaves it to
the application). The user approves at once: there is no login page.

Prints one JSON line {"issuer": ..., "client_id": ...} once listening.
"""

import json
import os
import sys
import time

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback

from authlib.integrations.flask_oauth2 import AuthorizationServer  # noqa: E402
from authlib.oauth2.rfc6749 import grants  # noqa: E402
from authlib.oauth2.rfc6749.models import AuthorizationCodeMixin, ClientMixin, TokenMixin  # noqa: E402
from authlib.oauth2.rfc7009 import RevocationEndpoint  # noqa: E402
from authlib.oauth2.rfc7636 import CodeChallenge  # noqa: E402
from flask import Flask, jsonify, request  # noqa: E402
from werkzeug.serving import make_server  # noqa: E402

CLIENT_ID = "spotoken-interop"
USER = "alice"


class Client(ClientMixin):
    client_id = CLIENT_ID

    def get_client_id(self):
        return self.client_id

    def get_default_redirect_uri(self):
        return None

    def get_allowed_scope(self, scope):
        return scope or ""

    def check_redirect_uri(self, redirect_uri):
        # A native app's loopback redirect: any port (RFC 8252 §7.3).
        return redirect_uri.startswith("http://127.0.0.1:") and redirect_uri.endswith("/callback")

    def check_client_secret(self, client_secret):
        return False

    def check_endpoint_auth_method(self, method, endpoint):
        return method == "none"

    def check_response_type(self, response_type):
        return response_type == "code"

    def check_grant_type(self, grant_type):
        return grant_type in ("authorization_code", "refresh_token")


class Code(AuthorizationCodeMixin):
    def __init__(self, code, redirect_uri, scope, challenge, method):
        self.code, self.redirect_uri, self.scope = code, redirect_uri, scope
        self.code_challenge, self.code_challenge_method = challenge, method

    def get_redirect_uri(self):
        return self.redirect_uri

    def get_scope(self):
        return self.scope


class Token(TokenMixin):
    def __init__(self, data):
        self.access_token = data["access_token"]
        self.refresh_token = data.get("refresh_token")
        self.scope = data.get("scope", "")
        self.expires_in = data.get("expires_in", 3600)
        self.issued_at = time.time()
        self.revoked = False

    def check_client(self, client):
        return client.get_client_id() == CLIENT_ID

    def get_scope(self):
        return self.scope

    def get_expires_in(self):
        return self.expires_in

    def is_expired(self):
        return time.time() > self.issued_at + self.expires_in

    def is_revoked(self):
        return self.revoked

    def get_user(self):
        return USER

    def get_client(self):
        return CLIENT


CLIENT = Client()
CODES = {}
TOKENS = {}  # by access token and by refresh token


def save_token(data, req):
    t = Token(data)
    TOKENS[t.access_token] = t
    if t.refresh_token:
        TOKENS[t.refresh_token] = t


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]

    def save_authorization_code(self, code, req):
        data = req.payload.data
        CODES[code] = Code(
            code, req.payload.redirect_uri, req.scope,
            data.get("code_challenge"), data.get("code_challenge_method"),
        )

    def query_authorization_code(self, code, client):
        return CODES.get(code)

    def delete_authorization_code(self, authorization_code):
        CODES.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code):
        return USER


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["none"]
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation

    def authenticate_refresh_token(self, refresh_token):
        t = TOKENS.get(refresh_token)
        if t is not None and t.refresh_token == refresh_token and not t.revoked:
            return t
        return None

    def authenticate_user(self, refresh_token):
        return USER

    def revoke_old_credential(self, refresh_token):
        refresh_token.revoked = True


class Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["none"]

    def query_token(self, token_string, token_type_hint):
        return TOKENS.get(token_string)

    def revoke_token(self, token, req):
        token.revoked = True


app = Flask(__name__)
app.config.update(
    OAUTH2_REFRESH_TOKEN_GENERATOR=True,
    OAUTH2_TOKEN_EXPIRES_IN={"authorization_code": 3600, "refresh_token": 3600},
)
server = AuthorizationServer(app, query_client=lambda cid: CLIENT if cid == CLIENT_ID else None,
                             save_token=save_token)
server.register_grant(CodeGrant, [CodeChallenge(required=True)])
server.register_grant(RefreshGrant)
server.register_endpoint(Revocation)


@app.get("/authorize")
def authorize():
    grant = server.get_consent_grant(end_user=USER)
    return server.create_authorization_response(grant=grant, grant_user=USER)


@app.post("/token")
def token():
    return server.create_token_response()


@app.post("/revoke")
def revoke():
    return server.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME)


@app.get("/.well-known/oauth-authorization-server")
def metadata():
    issuer = ISSUER
    r = jsonify({
        "issuer": issuer,
        "authorization_endpoint": f"{issuer}/authorize",
        "token_endpoint": f"{issuer}/token",
        "revocation_endpoint": f"{issuer}/revoke",
        "response_types_supported": ["code"],
        "grant_types_supported": ["authorization_code", "refresh_token"],
        "code_challenge_methods_supported": ["S256"],
        "token_endpoint_auth_methods_supported": ["none"],
    })
    r.headers["Cache-Control"] = "public, max-age=60"
    return r


httpd = make_server("127.0.0.1", 0, app, threaded=True)
ISSUER = f"http://127.0.0.1:{httpd.server_port}"
print(json.dumps({"issuer": ISSUER, "client_id": CLIENT_ID}), flush=True)
sys.stdout.flush()
httpd.serve_forever()
