"""Hostile clients on raw sockets: one that trickles its body, one that never reads its stream."""

from __future__ import annotations

import asyncio
import contextlib
import socket


def raw_connection(url: str, rcvbuf: int | None = None) -> socket.socket:
    """A non-blocking socket connected to `url`'s host and port (`rcvbuf`: a small receive buffer)."""
    host, port = url.removeprefix("http://").split("/", 1)[0].split(":")
    sock = socket.socket()
    if rcvbuf is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.connect((host, int(port)))
    sock.setblocking(False)
    return sock


async def trickled_body_answer(url: str, path: str = "/v1/chat/completions", timeout_s: float = 20) -> bytes:
    """Send a head announcing 100 bytes of body, then the body a byte every half second; return the
    first bytes the server answers (b"" if it closes without an answer)."""
    loop = asyncio.get_running_loop()
    sock = raw_connection(url)
    await loop.sock_sendall(sock, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\n"
                                  b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n")

    async def trickle() -> None:
        for byte in b'{"model": "' * 9:
            await loop.sock_sendall(sock, bytes([byte]))
            await asyncio.sleep(0.5)

    trickler = asyncio.ensure_future(trickle())
    try:
        return await asyncio.wait_for(loop.sock_recv(sock, 65536), timeout_s)
    finally:
        trickler.cancel()
        with contextlib.suppress(asyncio.CancelledError, OSError):
            await trickler
        sock.close()


async def send_and_never_read(url: str, body: bytes, path: str = "/v1/chat/completions") -> socket.socket:
    """Post `body` on a socket with a small receive buffer that is then never read; the caller closes it."""
    sock = raw_connection(url, rcvbuf=4096)
    await asyncio.get_running_loop().sock_sendall(
        sock, b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
              b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    return sock
