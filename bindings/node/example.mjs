// Who am I on Spotify: one spotoken token, one plain fetch.
//
//   spotoken login && node bindings/node/example.mjs
import { getAccessToken, AuthorizationNeeded } from "./index.js";

const api = process.env.SPOTOKEN_API_URL ?? "https://api.spotify.com";
try {
  const token = await getAccessToken({ minValid: "1m" });
  const res = await fetch(`${api}/v1/me`, { headers: { Authorization: `Bearer ${token}` } });
  if (!res.ok) throw new Error(`/v1/me answered HTTP ${res.status}`);
  const me = await res.json();
  console.log(`${me.display_name} (${me.id})`);
} catch (e) {
  if (e instanceof AuthorizationNeeded) console.error(`log in first: ${e.message}`);
  else console.error(e.message);
  process.exitCode = e.exitCode ?? 1;
}
