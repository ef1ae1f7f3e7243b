"""Hand an anonymous memory to a process you did not start, over a Unix socket.

The server makes a memory, writes a message into it and listens on a Unix socket
path.  A client of the same user connects and receives the memory itself: the
descriptor travels with SCM_RIGHTS, so no name or path to the memory ever exists.
The client reads the message and writes an answer that the server then reads.

Run both roles at once (the server starts the client as a plain subprocess that
inherits nothing):

    python examples/socket_handoff.py

or in two terminals:

    python examples/socket_handoff.py server /tmp/handoff.sock
    python examples/socket_handoff.py client /tmp/handoff.sock
"""

from __future__ import annotations

import argparse
import os
import socket
import struct
import subprocess
import sys
import tempfile

from anonshm import AnonymousMemory

MESSAGE = b"hello from the server"
ANSWER = b"hello back from the client"
ANSWER_AT = 1024


def say(role: str, text: str) -> None:
    print(f"[{role} {os.getpid()}] {text}", flush=True)


def peer_uid(conn: socket.socket) -> int:
    """The user id of the process at the other end (the kernel vouches for it)."""
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    uid: int = struct.unpack("3i", creds)[1]
    return uid


def hand_over(server: socket.socket, mem: AnonymousMemory) -> bool:
    """Send ``mem`` to the first client of our own user; wait until it is done."""
    server.settimeout(60)
    conn, _ = server.accept()
    with conn:
        if peer_uid(conn) != os.getuid():
            say("server", "refused a client of another user")
            return False
        mem.send(conn)
        say("server", f"sent {mem!r}")
        conn.settimeout(60)
        done = conn.recv(16)  # the client says when it has written
    say("server", f"the client said {done!r}")
    return done == b"done"


def serve_one(path: str, client: list[str] | None = None) -> bool:
    """Serve one client on ``path`` (started from ``client`` if given); check its answer."""
    with (
        AnonymousMemory(4096, name="socket-handoff") as mem,
        socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server,
    ):
        with mem.map() as view:
            view[: len(MESSAGE)] = MESSAGE
        server.bind(path)
        try:
            server.listen(1)
            say("server", f"wrote {MESSAGE!r}; listening on {path}")
            # The client inherits nothing: anonshm's descriptors are close-on-exec.
            child = None if client is None else subprocess.Popen(client)
            try:
                handed = hand_over(server, mem)
            except BaseException:
                if child is not None:
                    child.kill()
                    child.wait()
                raise
        finally:
            os.unlink(path)
        if child is not None and child.wait(timeout=60) != 0:
            say("server", f"the client failed with status {child.returncode}")
            return False
        with mem.map(ANSWER_AT, len(ANSWER)) as view:
            answer = bytes(view.buf)
        say("server", f"the memory now holds {answer!r}")
        return handed and answer == ANSWER


def client(path: str) -> None:
    """Connect, receive the memory, read the server's message, write an answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(60)
        sock.connect(path)
        # Where the kernel fixes no memory's size (macOS, the BSDs: no seals), every
        # memory is resizable, and receive() accepts one only when told to.
        with AnonymousMemory(1) as probe:
            resizable = not probe.fixed_size
        with (
            AnonymousMemory.receive(sock, allow_resizable=resizable) as mem,
            mem.map() as view,
        ):
            say("client", f"received {mem!r}")
            say("client", f"reads {bytes(view.buf[: len(MESSAGE)])!r}")
            view[ANSWER_AT : ANSWER_AT + len(ANSWER)] = ANSWER
        sock.sendall(b"done")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("role", nargs="?", choices=["both", "server", "client"], default="both")
    parser.add_argument("path", nargs="?", help="the socket path (server and client roles)")
    args = parser.parse_args()
    if args.role != "both" and args.path is None:
        parser.error(f"the {args.role} role needs the socket path")
    if args.role == "client":
        client(args.path)
        return 0
    if args.role == "server":
        return 0 if serve_one(args.path) else 1
    # A directory only this user can enter keeps other users off the socket.
    with tempfile.TemporaryDirectory(prefix="anonshm-") as directory:
        path = os.path.join(directory, "handoff.sock")
        ok = serve_one(path, [sys.executable, os.path.abspath(__file__), "client", path])
    print("ok: the server read the client's answer" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
