"""A free loopback port: for a server a test starts, or an address where nothing listens."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A port on 127.0.0.1 the system reports free right now (bound, read, released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
