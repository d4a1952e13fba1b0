// A single-page app behind `spotoken serve`: no token ever reaches this code.
// The browser holds an HttpOnly session cookie; every Web API call goes to
// /api/... on the same origin, and spotoken adds the token. Writes carry an
// X-Requested-With header, spotoken's CSRF proof.
//
// Routes (history API): "/" and "/search?q=…". A deep link works before
// login: the login link carries the current path as return_to.

const $ = (id) => document.getElementById(id);
const WRITE = { "X-Requested-With": "spotoken-spa" };

/** GET or write through the BFF; resolves to { status, body }. */
async function call(method, path, body) {
  const headers = method === "GET" ? {} : { ...WRITE };
  if (body !== undefined) headers["content-type"] = "application/json";
  const r = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    credentials: "same-origin",
  });
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = null; }
  return { status: r.status, body: json };
}

function say(text, isError = false) {
  $("message").textContent = text;
  $("message").classList.toggle("error", isError);
}

function showLoggedOut(code) {
  $("status").textContent = code === "session_expired"
    ? "Your session has ended. Log in again."
    : "You are not logged in.";
  const here = location.pathname + location.search;
  $("login").href = "/auth/login?return_to=" + encodeURIComponent(here);
  $("login").hidden = false;
  $("account").hidden = true;
  $("app").hidden = true;
}

/** What an error answer from spotoken or Spotify means to the user. */
function explain(r) {
  const e = r.body?.error;
  if (r.status === 401) {
    showLoggedOut(typeof e === "string" ? e : "session_expired");
    return "Log in again to continue.";
  }
  // Spotify's own errors: {"error": {"status", "message", "reason"}}.
  const reason = e?.reason;
  if (reason === "NO_ACTIVE_DEVICE") {
    return "No active Spotify device: open Spotify on your phone or computer, then press Play again.";
  }
  if (reason === "PREMIUM_REQUIRED") return "Playing music from here needs Spotify Premium.";
  if (r.status === 429 || r.status === 503) return "Spotify is busy; try again in a moment.";
  // spotoken's own errors: {"error": code, "message": …, "request_id": …}.
  if (typeof e === "string") return `${r.body.message} (${e}, request ${r.body.request_id})`;
  return e?.message ?? `Something went wrong (HTTP ${r.status}).`;
}

async function showPlaying() {
  const r = await call("GET", "/api/v1/me/player/currently-playing");
  if (r.status === 204) {
    $("playing").textContent = "Nothing is playing.";
  } else if (r.status === 200 && r.body?.item) {
    const item = r.body.item;
    const artists = (item.artists ?? []).map((a) => a.name).join(", ");
    $("playing").textContent = `Now playing: ${item.name}` + (artists ? ` by ${artists}` : "");
  } else {
    $("playing").textContent = explain(r);
  }
}

async function play(track) {
  say(`Starting ${track.name}…`);
  const r = await call("PUT", "/api/v1/me/player/play", { uris: [track.uri] });
  if (r.status === 204 || r.status === 200) {
    say(`Playing ${track.name}.`);
    await showPlaying();
  } else {
    say(explain(r), true);
  }
}

async function search(q) {
  $("q").value = q;
  $("results").replaceChildren();
  say(`Searching for ${q}…`);
  const r = await call("GET", "/api/v1/search?type=track&limit=10&q=" + encodeURIComponent(q));
  if (r.status !== 200) {
    say(explain(r), true);
    return;
  }
  const items = r.body?.tracks?.items ?? [];
  say(items.length ? `${items.length} tracks for ${q}` : `Nothing found for ${q}.`);
  for (const t of items) {
    const li = document.createElement("li");
    const artists = (t.artists ?? []).map((a) => a.name).join(", ");
    li.textContent = `${t.name} — ${artists}`;
    const b = document.createElement("button");
    b.type = "button";
    b.className = "play";
    b.textContent = "Play";
    b.addEventListener("click", () => play(t));
    li.append(b);
    $("results").append(li);
  }
}

/** Renders the current URL's page. */
async function route() {
  $("route").textContent = location.pathname + location.search;
  const q = new URLSearchParams(location.search).get("q");
  if (location.pathname === "/search" && q) {
    await search(q);
  } else {
    $("results").replaceChildren();
    say("");
  }
}

async function start() {
  const s = await call("GET", "/auth/session");
  if (s.status !== 200) {
    showLoggedOut(s.body?.error);
    $("route").textContent = location.pathname + location.search;
    return;
  }
  const user = s.body.user;
  $("status").textContent = "";
  $("user").textContent = `Logged in as ${user.display_name ?? user.id} (${user.id})`;
  $("login").hidden = true;
  $("account").hidden = false;
  $("app").hidden = false;
  await Promise.all([showPlaying(), route()]);
}

$("search-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("q").value.trim();
  if (!q) return;
  history.pushState(null, "", "/search?q=" + encodeURIComponent(q));
  route();
});

$("logout").addEventListener("click", async () => {
  const r = await call("POST", "/auth/logout");
  if (r.status === 200) {
    history.pushState(null, "", "/");
    showLoggedOut("unauthenticated");
    $("route").textContent = "/";
  } else {
    say(explain(r), true);
  }
});

window.addEventListener("popstate", route);
document.addEventListener("click", (ev) => {
  const a = ev.target.closest("a[data-link]");
  if (!a) return;
  ev.preventDefault();
  history.pushState(null, "", a.getAttribute("href"));
  route();
});

start();
