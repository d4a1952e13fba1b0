// The Node binding against the real spotoken executable and its emulator, in a
// fresh home. SPOTOKEN_BIN names the executable (default: the workspace's
// debug build); its directory goes first on PATH so the default lookup finds it.
import { test, beforeEach, afterEach } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFile } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, resolve, delimiter } from "node:path";
import { fileURLToPath } from "node:url";
import { createInterface } from "node:readline";

import {
  getAccessToken,
  getTokenInfo,
  getStatus,
  checkScope,
  AuthorizationNeeded,
  ConfigurationError,
  ExecutableNotFound,
  InsufficientScope,
  RateLimited,
  TemporaryFailure,
} from "../index.js";

const here = dirname(fileURLToPath(import.meta.url));
const bin = resolve(process.env.SPOTOKEN_BIN ?? join(here, "..", "..", "..", "target", "debug", "spotoken"));
const saved = { ...process.env };
let home, emulator, url;

beforeEach(async () => {
  for (const k of Object.keys(process.env)) if (k.startsWith("SPOTOKEN_")) delete process.env[k];
  home = mkdtempSync(join(tmpdir(), "spotoken-node-"));
  emulator = spawn(bin, ["emulate", "--port", "0", "--output", "json"], { stdio: ["ignore", "pipe", "inherit"] });
  const [line] = await createInterface({ input: emulator.stdout })[Symbol.asyncIterator]().next().then((r) => [r.value]);
  url = JSON.parse(line).url.replace(/\/$/, "");
  Object.assign(process.env, {
    SPOTOKEN_HOME: home,
    SPOTOKEN_CLIENT_ID: "spotoken-emulator-client",
    SPOTOKEN_ACCOUNTS_URL: url,
    SPOTOKEN_API_URL: url,
    PATH: `${dirname(bin)}${delimiter}${saved.PATH}`,
  });
});

afterEach(async () => {
  const exited = new Promise((r) => emulator.once("exit", r));
  emulator.kill("SIGTERM");
  await exited;
  rmSync(home, { recursive: true, force: true });
  for (const k of Object.keys(process.env)) if (!(k in saved)) delete process.env[k];
  Object.assign(process.env, saved);
});

async function control(method, path, body) {
  const res = await fetch(`${url}/_emulator/${path}`, {
    method,
    headers: { "content-type": "application/json" },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  assert.equal(res.status, 200, await res.clone().text());
  return res.json();
}

// `spotoken login --no-browser`, with this test as the browser (the emulator consents at once).
async function login(scopes = "user-read-private") {
  const child = spawn(bin, ["login", "--no-browser", "--timeout", "30s", "--scopes", scopes], {
    stdio: ["ignore", "ignore", "pipe"],
  });
  const exit = new Promise((r) => child.once("exit", r));
  let authorize;
  for await (const line of createInterface({ input: child.stderr })) {
    if (line.startsWith("http") && line.includes("/authorize?")) {
      authorize = line.trim();
      break;
    }
  }
  assert.ok(authorize, "login printed its URL");
  const consent = await fetch(authorize, { redirect: "manual" });
  assert.equal(consent.status, 302);
  await (await fetch(consent.headers.get("location"))).text();
  assert.equal(await exit, 0);
}

// Every access token expires, at the emulator and in the store: the
// executable's clock cannot be moved, so its row is (Node 20 has no SQLite
// module; Python's standard library has one).
async function age() {
  await control("POST", "expire-access-tokens");
  const sql = "import sqlite3,sys,time; db=sqlite3.connect(sys.argv[1]); " +
    "db.execute('UPDATE accounts SET access_expires_at = ?', (int(time.time()) - 1,)); db.commit()";
  await new Promise((res, rej) =>
    execFile("python3", ["-c", sql, join(home, "tokens.db")], (e) => (e ? rej(e) : res())),
  );
}

test("the token is one the Web API accepts", async () => {
  await control("PATCH", "settings", { access_token_lifetime_secs: 600 });
  await login();
  const token = await getAccessToken();
  const me = await fetch(`${url}/v1/me`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(me.status, 200);
  assert.equal((await me.json()).id, "alice");
  const info = await getTokenInfo({ account: "default", minValid: 60 });
  assert.equal(info.access_token, token);
  assert.deepEqual(info.scopes, ["user-read-private"]);
  const status = await getStatus();
  assert.equal(status.accounts[0].state, "active");
});

test("the example prints who is logged in", async () => {
  await login();
  const out = await new Promise((res, rej) =>
    execFile(process.execPath, [join(here, "..", "example.mjs")], (e, stdout) => (e ? rej(e) : res(stdout))),
  );
  assert.equal(out.trim(), "Alice Emulated (alice)");
});

test("not logged in rejects with AuthorizationNeeded", async () => {
  await assert.rejects(getAccessToken({ account: "nobody" }), (e) => {
    assert.ok(e instanceof AuthorizationNeeded);
    assert.equal(e.exitCode, 3);
    assert.match(e.message, /spotoken login --account nobody/);
    return true;
  });
});

test("a revoked login rejects with AuthorizationNeeded, without the token", async () => {
  await login();
  const old = await getAccessToken();
  await control("POST", "revoke", {});
  await age();
  await assert.rejects(getAccessToken(), (e) => {
    assert.ok(e instanceof AuthorizationNeeded);
    assert.match(e.message, /invalid_grant/);
    assert.ok(!e.message.includes(old) && !String(e.stack).includes(old));
    return true;
  });
});

test("a rate-limited refresh rejects with the wait", async () => {
  await login();
  await age();
  await control("POST", "failures", { endpoint: "token", status: 429, headers: { "Retry-After": "3600" } });
  await assert.rejects(getAccessToken(), (e) => {
    assert.ok(e instanceof RateLimited && e instanceof TemporaryFailure);
    assert.equal(e.exitCode, 4);
    assert.equal(e.retryAfter, 3600);
    return true;
  });
});

test("a missing scope is named", async () => {
  await login("user-read-private");
  await checkScope("GET", "/v1/me");
  await assert.rejects(checkScope("GET", "/v1/me/playlists"), (e) => {
    assert.ok(e instanceof InsufficientScope);
    assert.equal(e.exitCode, 5);
    assert.deepEqual(e.missingScopes, ["playlist-read-private"]);
    return true;
  });
});

test("a bad duration and a missing executable are configuration errors", async () => {
  await login();
  await assert.rejects(getAccessToken({ minValid: "soon" }), ConfigurationError);
  await assert.rejects(getAccessToken({ executable: join(home, "no-such-spotoken") }), ExecutableNotFound);
});
