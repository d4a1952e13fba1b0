// spotoken serve --demo in a real browser (Debian's headless Chromium, driven
// by playwright-core): log in through the emulator's consent page, see the
// profile and what is playing, log out. Keeps screenshots in e2e/screenshots/.
//
// Run by scripts/test when SPOTOKEN_E2E=1 (as .ci/run does, after installing
// chromium and `npm ci` here). SPOTOKEN_BIN names the spotoken binary.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { launchChromium } from "./helpers.mjs";

const here = dirname(fileURLToPath(import.meta.url));
const bin = process.env.SPOTOKEN_BIN ?? join(here, "..", "target", "debug", "spotoken");
const shots = join(here, "screenshots");
const children = [];
let home, emulatorUrl, serverUrl, browser;
// The processes see none of the caller's SPOTOKEN_* settings.
const baseEnv = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith("SPOTOKEN_")));

// Starts a spotoken process and resolves with the first line matching `pattern`.
function startProcess(args, env, stream, pattern) {
  const child = spawn(bin, args, { env: { ...baseEnv, ...env }, stdio: ["ignore", "pipe", "pipe"] });
  children.push(child);
  return new Promise((resolve, reject) => {
    let buf = "";
    const onData = (d) => {
      buf += d.toString();
      const m = buf.match(pattern);
      if (m) resolve(m[1]);
    };
    child[stream].on("data", onData);
    child.on("exit", (code) => reject(new Error(`${args[0]} exited with ${code}: ${buf}`)));
  });
}

before(async () => {
  home = mkdtempSync(join(tmpdir(), "spotoken-e2e-"));
  mkdirSync(shots, { recursive: true });
  const emu = await startProcess(["emulate", "--port", "0", "--output", "json"], {}, "stdout", /"url":"([^"]+)"/);
  emulatorUrl = emu;
  // The emulator shows its consent page, as Spotify would.
  const r = await fetch(`${emulatorUrl}/_emulator/settings`, {
    method: "PATCH",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ consent: "page" }),
  });
  assert.equal(r.status, 200);
  serverUrl = await startProcess(
    ["serve", "--demo", "--bind", "127.0.0.1:0", "--scopes", "user-read-private,user-read-currently-playing"],
    {
      SPOTOKEN_HOME: home,
      SPOTOKEN_CLIENT_ID: "spotoken-emulator-client",
      SPOTOKEN_ACCOUNTS_URL: emulatorUrl,
      SPOTOKEN_API_URL: emulatorUrl,
    },
    "stderr",
    // The whole URL: a chunk of stderr may end in the middle of it.
    /listening on (http:\/\/\S+)\s/,
  );
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  for (const c of children) c.kill("SIGTERM");
  if (home) rmSync(home, { recursive: true, force: true });
});

test("log in through the consent page, see the profile, log out", async () => {
  const page = await browser.newPage();
  await page.goto(serverUrl + "/");
  await page.getByText("You are not logged in.").waitFor();
  await page.click("#login");
  // Spotify's (the emulator's) consent page.
  await page.waitForSelector("#approve");
  assert.match(await page.textContent("#scopes"), /user-read-currently-playing/);
  await page.screenshot({ path: join(shots, "1-consent.png") });
  await page.click("#approve");
  // Back on the app, logged in, with data fetched through /api.
  await page.waitForSelector("#user");
  assert.equal(await page.textContent("#user"), "Logged in as Alice Emulated (alice)");
  await page.waitForFunction(() => document.querySelector("#playing")?.textContent.startsWith("Now playing"));
  await page.screenshot({ path: join(shots, "2-logged-in.png") });
  // The page's JavaScript cannot read the session cookie.
  assert.equal(await page.evaluate(() => document.cookie), "");
  const cookies = await page.context().cookies();
  const session = cookies.find((c) => c.name === "__Host-spotoken_session");
  assert.ok(session, "session cookie set");
  assert.equal(session.httpOnly, true);
  assert.equal(session.secure, true);
  assert.equal(session.sameSite, "Lax");
  await page.click("#logout");
  await page.getByText("You are not logged in.").waitFor();
  await page.screenshot({ path: join(shots, "3-logged-out.png") });
  const after = await page.context().cookies();
  assert.ok(!after.some((c) => c.name === "__Host-spotoken_session"), "cookie cleared");
});

test("a cancelled consent shows a clear page and creates no session", async () => {
  const context = await browser.newContext();
  const page = await context.newPage();
  await page.goto(serverUrl + "/auth/login");
  await page.waitForSelector("#deny");
  await page.click("#deny");
  await page.waitForSelector("#title");
  assert.equal(await page.textContent("#title"), "Login failed");
  assert.match(await page.textContent("#message"), /declined/);
  assert.ok(!(await context.cookies()).some((c) => c.name === "__Host-spotoken_session"));
  await context.close();
});
