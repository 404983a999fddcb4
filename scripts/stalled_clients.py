#!/usr/bin/env python3
"""Clients that send a request and never read the answer, and the server's memory meanwhile.

Opens N connections to a factstore server, sends each one request (a subscription, a long page
of GET /v1/events, or a poll of a persistent subscription), never reads a byte, and samples the
server's resident memory (VmRSS in /proc/<pid>/status) before, while they are held, and after
they are closed. Each socket's receive buffer is made small before it connects, so that the
answers the server writes stay in its own hands rather than in the kernel's buffers: the worst
case for the server's memory.

Usage (the server must run on this machine; raise `ulimit -n` above N plus a margin first):

    scripts/stalled_clients.py --pid $(pgrep -n factstore) --kind subscribe --clients 1000

It prints one JSON object: the RSS in MiB before, at the peak while held, at the end of the
hold and after the settle time, and what the connections had received when they were closed
(held open, answered 503, or closed by the server).
"""

import argparse
import http.client
import json
import socket
import sys
import time
import urllib.parse


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS")


def request_for(kind, host, token, index, group):
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    if kind == "subscribe":
        return f"GET /v1/subscribe HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
    if kind == "events":
        return f"GET /v1/events?limit=10000 HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode()
    if kind == "poll":
        body = json.dumps({"consumer": f"stalled-{index}", "max": 10000})
        return (
            f"POST /v1/subscriptions/{group}/poll HTTP/1.1\r\nHost: {host}\r\n{auth}"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}"
        ).encode()
    raise ValueError(kind)


def create_group(host, port, token, group):
    connection = http.client.HTTPConnection(host, port, timeout=30)
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    connection.request("PUT", f"/v1/subscriptions/{group}", body="{}", headers=headers)
    response = connection.getresponse()
    response.read()
    if response.status not in (200, 201):
        sys.exit(f"PUT /v1/subscriptions/{group} answered {response.status}")
    # Let the group read ahead what it will hand out.
    time.sleep(5)


def state_of(sock):
    """What a connection got, looking without reading: its first bytes, or that it closed."""
    try:
        first = sock.recv(16, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return "nothing"
    except OSError:
        return "reset"
    if not first:
        return "closed"
    if first.startswith(b"HTTP/1.1 503"):
        return "503"
    if first.startswith(b"HTTP/1.1 200"):
        return "200"
    return "other"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:6180")
    parser.add_argument("--pid", type=int, required=True, help="the server's process id")
    parser.add_argument("--kind", choices=["subscribe", "events", "poll"], required=True)
    parser.add_argument("--clients", type=int, default=1000)
    parser.add_argument("--token")
    parser.add_argument("--group", default="stalled-clients")
    parser.add_argument("--hold", type=float, default=20.0, help="seconds the clients stay")
    parser.add_argument("--settle", type=float, default=20.0, help="seconds watched after they close")
    parser.add_argument("--recv-buffer", type=int, default=4096, help="SO_RCVBUF of each client")
    args = parser.parse_args()

    url = urllib.parse.urlparse(args.url)
    host, port = url.hostname, url.port or 80
    if args.kind == "poll":
        create_group(host, port, args.token, args.group)

    before = rss_mib(args.pid)
    sockets = []
    opened = time.monotonic()
    for index in range(args.clients):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, args.recv_buffer)
        sock.connect((host, port))
        sock.sendall(request_for(args.kind, f"{host}:{port}", args.token, index, args.group))
        sockets.append(sock)
    open_seconds = time.monotonic() - opened

    peak = before
    held_until = time.monotonic() + args.hold
    while time.monotonic() < held_until:
        peak = max(peak, rss_mib(args.pid))
        time.sleep(0.25)
    held = rss_mib(args.pid)
    peak = max(peak, held)

    states = {}
    for sock in sockets:
        state = state_of(sock)
        states[state] = states.get(state, 0) + 1
    for sock in sockets:
        sock.close()

    settle_until = time.monotonic() + args.settle
    while time.monotonic() < settle_until:
        time.sleep(0.5)
    after = rss_mib(args.pid)

    print(
        json.dumps(
            {
                "kind": args.kind,
                "clients": args.clients,
                "recv_buffer": args.recv_buffer,
                "open_seconds": round(open_seconds, 1),
                "rss_mib": {
                    "before": round(before, 1),
                    "peak": round(peak, 1),
                    "end_of_hold": round(held, 1),
                    "after_close": round(after, 1),
                },
                "added_mib": {"peak": round(peak - before, 1), "after_close": round(after - before, 1)},
                "connections_at_close": states,
            }
        )
    )


if __name__ == "__main__":
    main()
