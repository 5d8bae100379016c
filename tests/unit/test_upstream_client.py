"""cortex.custom.upstream_client against real TCP servers that answer with scripted bytes: the
HTTP framings a user's server may choose, and the ways a connection can go wrong."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from cortex.custom.upstream_client import UpstreamError, UpstreamPool, read_all

Answer = Callable[[bytes], bytes | None]  # request bytes -> response bytes (None: close)


async def _serve(answer: Answer, close_after: int | None = None) -> tuple[asyncio.Server, int, list[int]]:
    """A server that reads one request head at a time and writes answer(head); `connections`
    counts accepted connections."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length")
                    ),
                    0,
                )
                request = head + await reader.readexactly(length)
                response = answer(request)
                if response is None:
                    break
                writer.write(response)
                await writer.drain()
                served += 1
                if b"connection: close" in response or (close_after is not None and served >= close_after):
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1], connections


def _head(path: str = "/", body: bytes = b"") -> bytes:
    return f"POST {path} HTTP/1.1\r\nhost: x\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body


async def _shut(pool: UpstreamPool, server: asyncio.Server) -> None:
    pool.close()
    await asyncio.sleep(0.05)  # the server's handlers see the end of their connections
    server.close()
    await server.wait_closed()


def test_sized_chunked_and_until_close_bodies() -> None:
    answers = iter(
        [
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end",
        ]
    )

    async def main() -> None:
        server, port, connections = await _serve(lambda request: next(answers, None), close_after=None)
        pool = UpstreamPool("127.0.0.1", port, read_timeout=5)
        bodies = []
        for _ in range(3):
            response = await pool.request(_head(), b"")
            assert response.status == 200
            bodies.append(await read_all(response))
        assert bodies == [b"hello", b"abcde", b"until the end"]
        assert len(connections) == 1  # kept alive until the server said close
        await _shut(pool, server)

    asyncio.run(main())


def test_informational_responses_are_skipped() -> None:
    async def main() -> None:
        server, port, _ = await _serve(
            lambda request: (
                b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\nHTTP/1.1 201 Created\r\n"
                b"x-final: yes\r\ncontent-length: 2\r\n\r\nok"
            )
        )
        pool = UpstreamPool("127.0.0.1", port, read_timeout=5)
        response = await pool.request(_head(), b"")
        assert response.status == 201
        assert (b"x-final", b"yes") in response.headers
        assert all(name != b"link" for name, _ in response.headers)
        assert await read_all(response) == b"ok"
        await _shut(pool, server)

    asyncio.run(main())


def test_a_connection_the_server_closed_while_idle_is_replaced_transparently() -> None:
    async def main() -> None:
        # the server closes each connection after one answer, without saying so (no
        # `connection: close`): the pooled connection is dead when the next request is sent
        server, port, connections = await _serve(
            lambda request: b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok", close_after=1
        )
        pool = UpstreamPool("127.0.0.1", port, read_timeout=5)
        for _ in range(3):
            response = await pool.request(_head(body=b"{}"), b"{}")
            assert await read_all(response) == b"ok"
            await asyncio.sleep(0.05)  # the server's close arrives while the connection is idle
        assert len(connections) == 3
        await _shut(pool, server)

    asyncio.run(main())


def test_more_bytes_than_content_length_is_an_error_and_the_connection_is_dropped() -> None:
    async def main() -> None:
        server, port, connections = await _serve(
            lambda request: b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n" + b"x" * 100_000
        )
        pool = UpstreamPool("127.0.0.1", port, read_timeout=5)

        async def exchange() -> None:
            response = await pool.request(_head(), b"")
            await read_all(response)

        with pytest.raises(UpstreamError, match=r"invalid HTTP response|more bytes than its Content-Length"):
            await exchange()
        await asyncio.sleep(0.05)
        assert pool._idle == []  # a connection that broke framing is never reused
        await _shut(pool, server)
        assert len(connections) == 1

    asyncio.run(main())


def test_no_answer_within_the_read_timeout_is_a_timeout_and_nothing_listening_is_an_upstream_error() -> None:
    async def main() -> None:
        async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                await reader.read()  # never answers; returns when the client gives up
            finally:
                writer.close()

        server = await asyncio.start_server(silent, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool("127.0.0.1", port, read_timeout=0.3)
        started = asyncio.get_running_loop().time()
        with pytest.raises(TimeoutError):
            await pool.request(_head(), b"")
        assert 0.25 < asyncio.get_running_loop().time() - started < 2
        server.close()
        probe = await asyncio.start_server(silent, "127.0.0.1", 0)
        closed_port = probe.sockets[0].getsockname()[1]
        probe.close()
        await probe.wait_closed()
        with pytest.raises(UpstreamError, match="cannot connect"):
            await UpstreamPool("127.0.0.1", closed_port, read_timeout=1).request(_head(), b"")

    asyncio.run(main())


def test_a_streamed_request_body_is_sent_chunked() -> None:
    received: list[bytes] = []

    def answer(request: bytes) -> bytes:
        received.append(request)
        return b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"

    async def body() -> AsyncIterator[bytes]:
        for part in (b"ab", b"", b"cde"):
            yield part

    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = await reader.readuntil(b"\r\n\r\n")
            rest = await reader.readuntil(b"0\r\n\r\n")
            writer.write(answer(head + rest))
            await writer.drain()
            writer.close()
            await writer.wait_closed()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = UpstreamPool("127.0.0.1", port, read_timeout=5)
        head = b"POST /u HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n"
        response = await pool.request(head, body(), chunked=True)
        assert response.status == 200
        assert await read_all(response) == b""
        server.close()

    asyncio.run(main())
    assert received[0].endswith(b"\r\n\r\n2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n")
