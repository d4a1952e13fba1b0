// What the browser tests share (not a test file: node --test runs *.test.mjs).
import { chromium } from "playwright-core";

/** Debian's headless Chromium (never a downloaded browser); CHROMIUM overrides the path. */
export function launchChromium() {
  return chromium.launch({
    executablePath: process.env.CHROMIUM ?? "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
      "--disable-sync", "--no-first-run", "--disable-quic"],
  });
}
