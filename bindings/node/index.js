// Fresh Spotify access tokens for Node, from the `spotoken` executable.
//
// Every call is one `spotoken` process: `spotoken token` answers a fresh cached
// token in about a millisecond, refreshes at most once however many processes
// ask at the same time (the executable holds the lock), and keeps the tokens
// encrypted. Nothing is cached here, so a logout or a new login elsewhere is
// seen by the next call. Failures reject with the error class matching the
// executable's exit code, read from its `--output json` error line on stderr;
// no error message ever holds a token.
import { execFile } from "node:child_process";

// Spotify's tokens are long base64url runs; nothing a person needs to read in
// an error message is.
const TOKEN_LIKE = /[A-Za-z0-9_-]{60,}/g;
const scrub = (text) => String(text).replace(TOKEN_LIKE, "[redacted]");

/** Any failure of the `spotoken` executable; `exitCode` is its exit code. */
export class SpotokenError extends Error {
  constructor(message, exitCode = 1) {
    super(scrub(message));
    this.name = new.target.name;
    this.exitCode = exitCode;
  }
}
/** Exit code 2: a setting is wrong (client id, URL, key, usage); no login fixes it. */
export class ConfigurationError extends SpotokenError {
  constructor(message) {
    super(message, 2);
  }
}
/** The `spotoken` executable is neither on PATH nor where it was said to be. */
export class ExecutableNotFound extends ConfigurationError {}
/** Exit code 3: the user must log in again (`spotoken login`). */
export class AuthorizationNeeded extends SpotokenError {
  constructor(message) {
    super(message, 3);
  }
}
/** Exit code 4: try again later; `retryAfter` is the wait in seconds, or null. */
export class TemporaryFailure extends SpotokenError {
  constructor(message, retryAfter = null) {
    super(message, 4);
    this.retryAfter = retryAfter;
  }
}
/** A temporary failure with a known wait (Spotify's 429 and its Retry-After). */
export class RateLimited extends TemporaryFailure {}
/** Exit code 5: the login lacks scopes; `missingScopes` names the ones to add. */
export class InsufficientScope extends SpotokenError {
  constructor(message, missingScopes = []) {
    super(message, 5);
    this.missingScopes = missingScopes;
  }
}
/** Exit code 1 (or a signal): a protocol error, a bug or a broken machine. */
export class UnexpectedFailure extends SpotokenError {}

function durationArg(d) {
  if (typeof d === "string") return d;
  if (typeof d !== "number" || !Number.isFinite(d) || d < 0) {
    throw new TypeError("minValid must be a non-negative number of seconds or a string like '5m'");
  }
  return String(Math.ceil(d));
}

/** The error for an exit code and what the executable said on stderr. */
export function errorFor(code, signal, stderr) {
  let detail = {};
  for (const line of String(stderr).split("\n").reverse()) {
    const t = line.trim();
    if (!t.startsWith("{")) continue;
    try {
      const v = JSON.parse(t);
      if (v && typeof v.error === "object" && v.error !== null) {
        detail = v.error;
        break;
      }
    } catch {
      // A log line that is not JSON after all.
    }
  }
  let message = typeof detail.message === "string" && detail.message ? detail.message : "";
  if (!message) {
    const lines = String(stderr).split("\n").filter((l) => l.trim());
    message = lines.slice(-3).join("\n") || `spotoken exited with code ${code}`;
  }
  if (signal) return new UnexpectedFailure(`spotoken was killed by ${signal}`);
  switch (code) {
    case 2:
      return new ConfigurationError(message);
    case 3:
      return new AuthorizationNeeded(message);
    case 4:
      return typeof detail.retry_after === "number"
        ? new RateLimited(message, detail.retry_after)
        : new TemporaryFailure(message);
    case 5:
      return new InsufficientScope(
        message,
        Array.isArray(detail.missing_scopes) ? detail.missing_scopes.filter((s) => typeof s === "string") : [],
      );
    default:
      return new UnexpectedFailure(message, code ?? 1);
  }
}

function run(args, opts = {}, okCodes = [0]) {
  const executable = opts.executable ?? "spotoken";
  const argv = [...args, "--output", "json"];
  if (opts.account != null) argv.push("--account", opts.account);
  if (opts.home != null) argv.push("--home", opts.home);
  return new Promise((resolve, reject) => {
    const child = execFile(
      executable,
      argv,
      { timeout: opts.timeout ?? 60_000, maxBuffer: 4 << 20, encoding: "utf8" },
      (err, stdout, stderr) => {
        if (!err) return resolve(stdout);
        if (err.code === "ENOENT" || err.code === "EACCES") {
          return reject(
            new ExecutableNotFound(
              `cannot run the spotoken executable (${executable}): ${err.code}; install spotoken or pass executable`,
            ),
          );
        }
        if (err.killed && opts.timeout !== 0) {
          return reject(new TemporaryFailure(`spotoken ${args[0]} did not answer in time`));
        }
        if (typeof err.code === "number" && okCodes.includes(err.code)) return resolve(stdout);
        reject(errorFor(typeof err.code === "number" ? err.code : null, err.signal, stderr));
      },
    );
    child.stdin?.end();
  });
}

function parse(out, what) {
  try {
    return JSON.parse(out);
  } catch {
    throw new UnexpectedFailure(`spotoken ${what} printed something that is not JSON`);
  }
}

/** The token with its expiry and scopes (`spotoken token --output json`). */
export async function getTokenInfo(opts = {}) {
  const args = ["token"];
  if (opts.minValid != null) args.push("--min-valid", durationArg(opts.minValid));
  const info = parse(await run(args, opts), "token");
  if (typeof info?.access_token !== "string") {
    throw new UnexpectedFailure("spotoken token printed JSON without an access_token");
  }
  return info;
}

/** A Spotify access token valid for at least `minValid` (default: five minutes). */
export async function getAccessToken(opts = {}) {
  return (await getTokenInfo(opts)).access_token;
}

/** Every account's state (`spotoken status --output json`); a login needed is
 * reported in an account's `state`, not thrown. */
export async function getStatus(opts = {}) {
  return parse(await run(["status"], { ...opts, account: undefined }, [0, 3]), "status");
}

/** Rejects with InsufficientScope naming the scopes the login lacks for
 * `method path` (such as GET /v1/me/playlists); resolves when none are missing
 * or spotoken does not know the endpoint. No network. */
export async function checkScope(method, path, opts = {}) {
  await run(["check-scope", method, path], opts);
}
