"""N MJPEG viewers of an Inferpath live view, in one process (stdlib only), for scripts/bench.py.

Each viewer opens ``/stream/<i>.mjpg``, reads every part as fast as it comes, and records how
long the first part took from the connect and, per part, how far it is behind the sink: the part's
``X-Sink-Ns`` header (the monotonic clock when the frame reached the web sink) against this
process's monotonic clock on arrival of the whole part (one machine, one clock). At the end
(``--duration``) it prints one JSON object.

    python scripts/mjpeg_viewers.py --port 8080 --viewers 10 --duration 20
"""

from __future__ import annotations

import argparse
import json
import socket
import threading
import time


def viewer(port: int, path: str, until: float, out: dict) -> None:
    t0 = time.monotonic()
    lags: list[float] = []
    first = None
    parts = 0
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: bench\r\n\r\n".encode())
        fh = sock.makefile("rb")
        while fh.readline() not in (b"\r\n", b""):
            pass
        while time.monotonic() < until:
            line = fh.readline()
            if not line:
                break
            if not line.lower().startswith(b"content-type"):
                continue
            headers = {}
            while line not in (b"\r\n", b""):
                k, _, v = line.decode().partition(":")
                headers[k.strip().lower()] = v.strip()
                line = fh.readline()
            fh.read(int(headers["content-length"]))
            now = time.monotonic_ns()
            parts += 1
            if first is None:
                first = now / 1e9 - t0
            if headers.get("x-sink-ns", "0") != "0":
                lags.append((now - int(headers["x-sink-ns"])) / 1e6)
        sock.close()
    except OSError as exc:
        out.setdefault("errors", []).append(str(exc))
    out.setdefault("first_s", []).append(first)
    out.setdefault("lags_ms", []).extend(lags)
    out.setdefault("parts", []).append(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--viewers", type=int, default=1)
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--stream", type=int, default=0)
    args = ap.parse_args()
    until = time.monotonic() + args.duration
    out: dict = {}
    threads = [threading.Thread(target=viewer, args=(args.port, f"/stream/{args.stream}.mjpg", until, out))
               for _ in range(args.viewers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
