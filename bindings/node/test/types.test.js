// index.d.ts declares exactly what index.js exports (a drift check without a
// TypeScript compiler; the declarations were checked with tsc --strict).
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";

import * as spotoken from "../index.js";

test("the type definitions name every export and nothing else", () => {
  const dts = readFileSync(new URL("../index.d.ts", import.meta.url), "utf8");
  const declared = [...dts.matchAll(/^export (?:declare )?(?:function|class) (\w+)/gm)].map((m) => m[1]);
  assert.deepEqual(declared.sort(), Object.keys(spotoken).sort());
});

test("every error class is a SpotokenError with its exit code", () => {
  const codes = {
    ConfigurationError: 2,
    ExecutableNotFound: 2,
    AuthorizationNeeded: 3,
    TemporaryFailure: 4,
    RateLimited: 4,
    InsufficientScope: 5,
    UnexpectedFailure: 1,
  };
  for (const [name, code] of Object.entries(codes)) {
    const e = new spotoken[name]("message");
    assert.ok(e instanceof spotoken.SpotokenError, name);
    assert.equal(e.exitCode, code, name);
    assert.equal(e.name, name);
  }
  const token = "BQ" + "x".repeat(200);
  assert.ok(!new spotoken.UnexpectedFailure(`sent ${token}`).message.includes(token));
});
