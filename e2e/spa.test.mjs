// The example single-page app (examples/spa) in a real browser (Debian's
// headless Chromium, driven by playwright-core), three ways, as a team would
// put it behind spotoken:
//
//   static    spotoken serve --static examples/spa
//   upstream  spotoken serve --app-upstream <a tiny Node server of the app>
//   nginx     nginx (the docs/DEPLOY.md recipe, TLS) in front of --static
//   caddy     Caddy (the docs/DEPLOY.md recipe) in front of --static, when
//             Debian's caddy is installed
//   strict    --static with --same-site strict (login only)
//
// Each: open a deep link logged out, log in through the emulator's consent
// page, land on the deep link, search, play (first with no active device:
// Spotify's 404 NO_ACTIVE_DEVICE and the app's message; then for real), check
// that a page on another origin of the same site cannot make a write call
// succeed, log out. Screenshots of every step go to
// target/e2e-screenshots/<way>/.
//
// Run by scripts/test when SPOTOKEN_E2E=1 (.ci/run installs chromium, nginx,
// caddy and playwright-core). SPOTOKEN_BIN names the spotoken binary.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { createHash } from "node:crypto";
import { createServer } from "node:http";
import { existsSync, mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, chmodSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname, extname, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { launchChromium } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const spa = join(root, "examples", "spa");
const bin = process.env.SPOTOKEN_BIN ?? join(root, "target", "debug", "spotoken");
const shotsRoot = join(root, "target", "e2e-screenshots");
const scopes = "user-read-private,user-read-currently-playing,user-modify-playback-state";
const children = [];
const servers = [];
let tmp, emulatorUrl, browser;
const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SPOTOKEN_")));

/** Starts a process and resolves with the first match of `pattern` in `stream`. */
function startProcess(cmd, args, env, stream, pattern) {
  const child = spawn(cmd, args, { env: { ...baseEnv, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let buf = "";
    child.stdout.on("data", (d) => { buf += d; if (stream === "stdout") check(); });
    child.stderr.on("data", (d) => { buf += d; if (stream === "stderr") check(); });
    function check() {
      const m = buf.match(pattern);
      if (m) resolve(m[1]);
    }
    child.on("exit", (code) => reject(new Error(`${cmd} ${args[0]} exited with ${code}: ${buf}`)));
  });
}

/** A free loopback port (for servers that cannot report the one they got). */
function freePort() {
  return new Promise((resolve) => {
    const s = createServer();
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

async function emulator(path, method = "GET", body) {
  const r = await fetch(emulatorUrl + path, {
    method,
    headers: body ? { "content-type": "application/json" } : {},
    body: body ? JSON.stringify(body) : undefined,
  });
  assert.ok(r.ok, `${method} ${path}: ${r.status}`);
  return r.headers.get("content-type")?.includes("json") ? r.json() : null;
}

/** `spotoken serve` with `args`; resolves with the URL it listens on. */
function serve(args, clientId = "spotoken-emulator-client") {
  return startProcess(
    bin,
    ["serve", "--bind", "127.0.0.1:0", "--scopes", scopes, ...args],
    {
      SPOTOKEN_HOME: mkdtempSync(join(tmp, "home-")),
      SPOTOKEN_CLIENT_ID: clientId,
      SPOTOKEN_ACCOUNTS_URL: emulatorUrl,
      SPOTOKEN_API_URL: emulatorUrl,
    },
    "stderr",
    /listening on (http:\/\/\S+)\s/,
  );
}

const types = { ".html": "text/html", ".js": "text/javascript", ".css": "text/css" };

/** The team's own server for --app-upstream: the app's files (index.html for
 * any other path), `/whoami` (the identity spotoken stated on this request)
 * and a WebSocket echo at `/ws`, as a dev server's hot reload would have. */
function appServer() {
  const s = createServer((req, res) => {
    const url = new URL(req.url, "http://x");
    if (url.pathname === "/whoami") {
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify({ user: req.headers["spotoken-user"] ?? null, scopes: req.headers["spotoken-scopes"] ?? null }));
      return;
    }
    let file = join(spa, normalize(url.pathname).replace(/^(\.\.[/\\])+/, ""));
    if (!file.startsWith(spa) || !existsSync(file) || !extname(file)) file = join(spa, "index.html");
    res.setHeader("content-type", types[extname(file)] ?? "application/octet-stream");
    res.end(readFileSync(file));
  });
  s.on("upgrade", (req, socket) => {
    const accept = createHash("sha1")
      .update(req.headers["sec-websocket-key"] + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")
      .digest("base64");
    socket.write("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n" +
      `Sec-WebSocket-Accept: ${accept}\r\n\r\n`);
    // Echo short masked text frames back unmasked, prefixed.
    socket.on("data", (buf) => {
      const len = buf[1] & 0x7f;
      if ((buf[0] & 0x0f) !== 1 || len > 125) return socket.end();
      const mask = buf.subarray(2, 6);
      const text = Buffer.from(buf.subarray(6, 6 + len).map((b, i) => b ^ mask[i % 4])).toString();
      const out = Buffer.from("echo: " + text);
      socket.write(Buffer.concat([Buffer.from([0x81, out.length]), out]));
    });
  });
  servers.push(s);
  return new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${s.address().port}`)));
}

/** A page on another origin of the same site (another port on 127.0.0.1). */
function otherOrigin() {
  const s = createServer((req, res) => {
    res.setHeader("content-type", "text/html");
    res.end("<!doctype html><title>another site's page</title><p>elsewhere</p>");
  });
  servers.push(s);
  return new Promise((resolve) => s.listen(0, "127.0.0.1", () => resolve(`http://127.0.0.1:${s.address().port}`)));
}

/** The fenced block of `lang` in docs/DEPLOY.md: the recipes are tested as written. */
function recipe(lang) {
  const doc = readFileSync(join(root, "docs", "DEPLOY.md"), "utf8");
  const m = doc.match(new RegExp("```" + lang + "\\n([\\s\\S]*?)```"));
  assert.ok(m, `no ${lang} block in docs/DEPLOY.md`);
  return m[1];
}

before(async () => {
  tmp = mkdtempSync(join(tmpdir(), "spotoken-spa-"));
  emulatorUrl = await startProcess(bin, ["emulate", "--port", "0", "--output", "json"], {}, "stdout", /"url":"([^"]+)"/);
  await emulator("/_emulator/settings", "PATCH", { consent: "page" });
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill("SIGTERM");
  for (const s of servers) s.close();
  if (tmp) rmSync(tmp, { recursive: true, force: true });
});

/** The whole journey through the app at `base`. */
async function journey(way, base, { https = false, extra } = {}) {
  const shots = join(shotsRoot, way);
  mkdirSync(shots, { recursive: true });
  const shot = (page, name) => page.screenshot({ path: join(shots, name + ".png"), fullPage: true });
  // A new world (registered apps stay): alice's Laptop active, playing the catalogue's first track.
  await emulator("/_emulator/reset", "POST");
  await emulator("/_emulator/settings", "PATCH", { consent: "page" });
  const context = await browser.newContext({ ignoreHTTPSErrors: https });
  const page = await context.newPage();

  // A deep link, logged out.
  await page.goto(base + "/search?q=Spin");
  await page.getByText("You are not logged in.").waitFor();
  assert.equal(await page.textContent("#route"), "/search?q=Spin");
  await shot(page, "1-deep-link-logged-out");

  // Spotify's (the emulator's) consent page.
  await page.click("#login");
  await page.waitForSelector("#approve");
  assert.match(await page.textContent("#scopes"), /user-modify-playback-state/);
  await shot(page, "2-consent");
  await page.click("#approve");

  // Back on the deep link, logged in, the search already run.
  await page.waitForSelector("#results li");
  assert.equal(new URL(page.url()).pathname + new URL(page.url()).search, "/search?q=Spin");
  assert.equal(await page.textContent("#user"), "Logged in as Alice Emulated (alice)");
  assert.match(await page.textContent("#results"), /Spin Loop/);
  await page.waitForFunction(() => document.querySelector("#playing")?.textContent.startsWith("Now playing"));
  assert.doesNotMatch(await page.textContent("#playing"), /Spin Loop/, "not yet");
  assert.equal(await page.evaluate(() => document.cookie), "", "the session cookie is HttpOnly");
  await shot(page, "3-deep-link-logged-in");

  // Play with no Spotify client running: Spotify's 404 NO_ACTIVE_DEVICE, the app's message.
  await emulator("/_emulator/devices", "POST", { user: "alice", active: null });
  await page.click("#results li:first-child .play");
  await page.waitForFunction(() => document.querySelector("#message")?.textContent.includes("No active Spotify device"));
  await shot(page, "4-no-active-device");

  // A device is on: play, and what is playing follows.
  await emulator("/_emulator/devices", "POST", { user: "alice", active: "5emuDeviceLaptop00000000000000000000001" });
  await page.click("#results li:first-child .play");
  await page.waitForFunction(() => document.querySelector("#message")?.textContent.startsWith("Playing Spin Loop"));
  await page.waitForFunction(() => document.querySelector("#playing")?.textContent.startsWith("Now playing: Spin Loop"));
  await shot(page, "5-playing");

  // A new search from the form: the URL follows (history API), and a reload keeps it.
  await page.fill("#q", "Loopback");
  await page.click("#search-form button");
  await page.waitForFunction(() => document.querySelector("#message")?.textContent.includes("for Loopback"));
  assert.equal(new URL(page.url()).search, "?q=Loopback");
  await page.reload();
  await page.waitForSelector("#results li");
  assert.match(await page.textContent("#results"), /Loopback/);
  await shot(page, "6-search-after-reload");

  if (extra) await extra(page, shot);

  // Another origin of the same site (its requests carry the Lax cookie):
  // neither a simple cross-origin PUT nor one with the CSRF header gets a
  // write through, and nothing reaches Spotify.
  const before = await emulator("/_emulator/counters");
  const evil = await context.newPage();
  await evil.goto(await otherOrigin());
  const outcome = await evil.evaluate(async (target) => {
    const out = {};
    try {
      // A "simple" request: no preflight, the cookie goes along.
      const r = await fetch(target + "/api/v1/me/player/next", { method: "POST", credentials: "include", mode: "no-cors", body: "x" });
      out.simple = r.type;
    } catch (e) { out.simple = "blocked"; }
    try {
      await fetch(target + "/api/v1/me/player/pause", {
        method: "PUT", credentials: "include", headers: { "X-Requested-With": "x" },
      });
      out.withHeader = "sent";
    } catch (e) { out.withHeader = "blocked"; }
    return out;
  }, base);
  assert.equal(outcome.withHeader, "blocked", "the preflight finds no CORS");
  const afterCounters = await emulator("/_emulator/counters");
  const total = (c) => Object.values(c.api_requests).reduce((a, b) => a + b, 0);
  assert.equal(total(afterCounters), total(before), "no request from the other origin reached Spotify");
  await evil.screenshot({ path: join(shots, "7-other-origin.png") });
  await evil.close();
  await page.reload();
  await page.waitForFunction(() => document.querySelector("#playing")?.textContent.startsWith("Now playing: Spin Loop"));

  // Log out: the cookie goes, and the deep link asks for a login again.
  await page.click("#logout");
  await page.getByText("You are not logged in.").waitFor();
  assert.ok(!(await context.cookies()).some((c) => c.name === "__Host-spotoken_session"), "cookie cleared");
  await shot(page, "8-logged-out");
  await page.goto(base + "/search?q=Spin");
  await page.getByText("You are not logged in.").waitFor();
  await context.close();
}

test("static: spotoken serve --static examples/spa", async () => {
  const base = await serve(["--static", spa]);
  await journey("static", base);
});

test("upstream: spotoken serve --app-upstream (the team's server, WebSockets included)", async () => {
  const app = await appServer();
  const base = await serve(["--app-upstream", app]);
  await journey("upstream", base, {
    extra: async (page, shot) => {
      // The app's server learns who is logged in from spotoken alone.
      const who = await page.evaluate(async () => (await fetch("/whoami", { headers: { "Spotoken-User": "mallory" } })).json());
      assert.equal(who.user, "alice");
      assert.match(who.scopes, /user-modify-playback-state/);
      // A WebSocket (a dev server's hot reload) through spotoken.
      const echoed = await page.evaluate(() => new Promise((resolve, reject) => {
        const ws = new WebSocket(location.origin.replace("http", "ws") + "/ws");
        ws.onopen = () => ws.send("hot reload");
        ws.onmessage = (m) => { resolve(m.data); ws.close(); };
        ws.onerror = () => reject(new Error("websocket failed"));
      }));
      assert.equal(echoed, "echo: hot reload");
      await shot(page, "6b-websocket");
    },
  });
});

/** A certificate for 127.0.0.1, made for the test. */
function certificate(dir) {
  const cert = join(dir, "cert.pem");
  const key = join(dir, "key.pem");
  execFileSync("openssl", ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert,
    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"], { stdio: "ignore" });
  return { cert, key };
}

/** Registers an app with the emulator for a public URL other than plain loopback HTTP. */
async function clientFor(publicUrl, id) {
  await emulator("/_emulator/clients", "POST", { id, redirect_uris: [publicUrl + "/auth/callback"] });
  return id;
}

const nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"].find(existsSync);

test("nginx: the docs/DEPLOY.md recipe terminating TLS in front of --static", { skip: !nginx && "nginx is not installed" }, async () => {
  const dir = mkdtempSync(join(tmp, "nginx-"));
  chmodSync(dir, 0o755);
  const { cert, key } = certificate(dir);
  const port = await freePort();
  const publicUrl = `https://127.0.0.1:${port}`;
  const id = await clientFor(publicUrl, "spa-behind-nginx");
  const upstream = await serve(["--static", spa, "--public-url", publicUrl, "--trusted-proxy", "127.0.0.1"], id);
  const site = recipe("nginx")
    .replaceAll("app.example.com", "127.0.0.1")
    .replace("listen 443 ssl http2;", `listen 127.0.0.1:${port} ssl http2;`)
    .replace(/server \{\n    listen 80;[\s\S]*?\n\}\n/, "")
    .replace("server 127.0.0.1:8080;", `server ${new URL(upstream).host};`)
    .replace(/ssl_certificate\s+\S+;/, `ssl_certificate ${cert};`)
    .replace(/ssl_certificate_key\s+\S+;/, `ssl_certificate_key ${key};`);
  assert.ok(!site.includes("8080") && !site.includes("443"), site);
  const temp = (n) => { const p = join(dir, n); mkdirSync(p, { mode: 0o777 }); chmodSync(p, 0o777); return p; };
  writeFileSync(join(dir, "nginx.conf"), `daemon off;
pid ${join(dir, "nginx.pid")};
error_log stderr warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path ${temp("body")};
  proxy_temp_path ${temp("proxy")};
  fastcgi_temp_path ${temp("fastcgi")};
  uwsgi_temp_path ${temp("uwsgi")};
  scgi_temp_path ${temp("scgi")};
${site}
}
`);
  const proc = spawn(nginx, ["-c", join(dir, "nginx.conf"), "-p", dir, "-e", "stderr"], { stdio: ["ignore", "inherit", "inherit"] });
  children.push(proc);
  await waitTls(publicUrl);
  await journey("nginx", publicUrl, { https: true });
});

/** Resolves once a TLS server answers at `url` (bounded). */
async function waitTls(url) {
  const { request } = await import("node:https");
  const deadline = Date.now() + 20000;
  for (;;) {
    const ok = await new Promise((resolve) => {
      const req = request(url + "/healthz", { rejectUnauthorized: false }, (res) => { res.resume(); resolve(true); });
      req.on("error", () => resolve(false));
      req.end();
    });
    if (ok) return;
    if (Date.now() > deadline) throw new Error(`${url} never answered over TLS`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const caddy = ["/usr/bin/caddy"].find(existsSync);

test("caddy: the docs/DEPLOY.md recipe in front of --static", { skip: !caddy && "caddy is not installed" }, async () => {
  const dir = mkdtempSync(join(tmp, "caddy-"));
  const port = await freePort();
  const publicUrl = `https://127.0.0.1:${port}`;
  const id = await clientFor(publicUrl, "spa-behind-caddy");
  const upstream = await serve(["--static", spa, "--public-url", publicUrl, "--trusted-proxy", "127.0.0.1"], id);
  const site = recipe("caddyfile")
    .replace("app.example.com {", `https://127.0.0.1:${port} {\n\ttls internal`)
    .replace("127.0.0.1:8080", new URL(upstream).host);
  writeFileSync(join(dir, "Caddyfile"), `{
	admin off
	skip_install_trust
	auto_https disable_redirects
	storage file_system ${join(dir, "data")}
}
${site}`);
  const proc = spawn(caddy, ["run", "--config", join(dir, "Caddyfile"), "--adapter", "caddyfile"], {
    env: { ...baseEnv, HOME: dir, XDG_DATA_HOME: join(dir, "xdg-data"), XDG_CONFIG_HOME: join(dir, "xdg-config") },
    stdio: ["ignore", "ignore", "pipe"],
  });
  let log = "";
  proc.stderr.on("data", (d) => { log += d; });
  proc.on("exit", (code) => { if (code) console.error(`caddy exited with ${code}:\n${log}`); });
  children.push(proc);
  await waitTls(publicUrl);
  await journey("caddy", publicUrl, { https: true });
});

test("strict: --same-site strict, the app's own calls carry the cookie after the login's redirect", async () => {
  await emulator("/_emulator/reset", "POST");
  await emulator("/_emulator/settings", "PATCH", { consent: "page" });
  const base = await serve(["--static", spa, "--same-site", "strict"]);
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(base + "/search?q=Spin");
  await page.click("#login");
  await page.click("#approve");
  await page.waitForSelector("#results li");
  assert.equal(await page.textContent("#user"), "Logged in as Alice Emulated (alice)");
  const session = (await context.cookies()).find((c) => c.name === "__Host-spotoken_session");
  assert.equal(session?.sameSite, "Strict");
  mkdirSync(join(shotsRoot, "strict"), { recursive: true });
  await page.screenshot({ path: join(shotsRoot, "strict", "1-logged-in.png"), fullPage: true });
  await context.close();
});
