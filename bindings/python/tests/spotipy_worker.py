"""A worker process for the concurrency test: THREADS threads wait for "go" on
stdin, each calls ``me()`` through spotipy and spotoken, and the results are
printed as JSON (the ids seen and the errors)."""

from __future__ import annotations

import json
import sys
import threading
from typing import List

import spotipy

import spotoken.spotipy


def main() -> None:
    api_url, threads = sys.argv[1], int(sys.argv[2])
    ids: List[str] = []
    errors: List[str] = []
    lock = threading.Lock()
    ready = threading.Barrier(threads + 1)

    def call() -> None:
        sp = spotipy.Spotify(auth_manager=spotoken.spotipy.AuthManager(), retries=0)
        sp.prefix = api_url + "/v1/"
        ready.wait()
        try:
            me = sp.me()
            with lock:
                ids.append(me["id"])
        except Exception as e:  # reported to the test, which fails on any
            with lock:
                errors.append(f"{type(e).__name__}: {e}")

    workers = [threading.Thread(target=call) for _ in range(threads)]
    for w in workers:
        w.start()
    print("ready", flush=True)
    sys.stdin.readline()
    ready.wait()
    for w in workers:
        w.join()
    print(json.dumps({"ids": ids, "errors": errors}), flush=True)


if __name__ == "__main__":
    main()
