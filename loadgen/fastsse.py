"""A deliberately trivial OpenAI-style SSE server for benchmarking the load generator itself.

It answers every completion with a canned stream (a few token chunks, a usage chunk, [DONE])
written at once from a bare asyncio Protocol: no framework, no per-request allocation beyond the
parse, so one process serves far more requests/s than the client under test can send.
Run as `python -m fleetgate.loadgen.fastsse [--chunks N] [--delay-s S]`; it prints `PORT <n>` once listening.
`--delay-s` holds every answer back (without blocking others): a slow target for open-loop tests.
"""

from __future__ import annotations

import argparse
import asyncio
import json


def _chunked(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def canned_responses(chunks: int) -> dict[bytes, bytes]:
    """Full HTTP responses by request path (chat and completions stream; /v1/models lists one model)."""
    usage = {"prompt_tokens": 16, "completion_tokens": chunks, "total_tokens": 16 + chunks,
             "prompt_tokens_details": {"cached_tokens": 0}}  # fmt: skip
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"

    def stream(choice: dict) -> bytes:
        events = [{"choices": [choice]} for _ in range(chunks)] + [{"choices": [], "usage": usage}]
        body = b"".join(_chunked(b"data: " + json.dumps(e).encode() + b"\n\n") for e in events)
        return head + body + _chunked(b"data: [DONE]\n\n") + b"0\r\n\r\n"

    models = json.dumps({"object": "list", "data": [{"id": "fast", "object": "model"}]}).encode()
    return {
        b"/v1/chat/completions": stream({"index": 0, "delta": {"content": "tok "}}),
        b"/v1/completions": stream({"index": 0, "text": "tok "}),
        b"/v1/models": b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
        % (len(models), models),
    }


NOT_FOUND = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"


class _FastProtocol(asyncio.Protocol):
    """HTTP/1.1 keep-alive with Content-Length bodies: enough for aiohttp's client requests."""

    def __init__(self, responses: dict[bytes, bytes], delay_s: float) -> None:
        self._responses = responses
        self._delay_s = delay_s
        self._buffer = bytearray()
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        while True:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(self._buffer[:end])
            length = 0
            marker = head.lower().find(b"content-length:")
            if marker >= 0:
                length = int(head[marker + 15 :].split(b"\r\n", 1)[0])
            if len(self._buffer) < end + 4 + length:
                return
            del self._buffer[: end + 4 + length]
            path = head.split(b" ", 2)[1]
            assert self._transport is not None
            response = self._responses.get(path, NOT_FOUND)
            if self._delay_s > 0:
                asyncio.get_running_loop().call_later(self._delay_s, self._write, response)
            else:
                self._transport.write(response)

    def _write(self, response: bytes) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(response)


async def serve(chunks: int, delay_s: float = 0.0, host: str = "127.0.0.1", port: int = 0) -> asyncio.Server:
    responses = canned_responses(chunks)
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _FastProtocol(responses, delay_s), host, port, backlog=4096)


async def _main(chunks: int, delay_s: float) -> None:
    server = await serve(chunks, delay_s)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument("--delay-s", type=float, default=0.0)
    from fleetgate.loadgen.replay import run_event_loop

    args = parser.parse_args()
    run_event_loop(lambda: _main(args.chunks, args.delay_s))
