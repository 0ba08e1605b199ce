"""Streams through `uplion run`: a cap on the streams one token holds at once, and a client that
does not read its stream loses it at the request's deadline instead of holding it."""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx
import pytest

from tests import helpers

MODELS = """
models:
  - name: echo
    engine: {kind: test-echo}
    concurrency: 8
    request_timeout_s: 10
  - name: echo-slow
    engine: {kind: test-echo, options: {token_delay_s: 0.05}}
    concurrency: 4
    request_timeout_s: 10
  - name: echo-cut
    engine: {kind: test-echo, options: {token_delay_s: 0.001}}
    concurrency: 2
    request_timeout_s: 3
"""


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[helpers.Served]:
    folder = tmp_path_factory.mktemp("streams")
    models = folder / "models.yaml"
    models.write_text(MODELS)
    with helpers.platform(folder, models=models, env={"UPLION_STREAMS_PER_TOKEN": "1"}) as running:
        yield running


@pytest.fixture
def http(served: helpers.Served) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=served.url, headers=served.headers, timeout=30) as instance:
        yield instance


def stream_body(model: str, text: str, **extra: object) -> dict[str, object]:
    return {"model": model, "stream": True, "messages": [{"role": "user", "content": text}],
            **extra}


def poll_stream_status(http: httpx.Client, wanted: int, within_s: float) -> None:
    """Open short streams until one answers ``wanted`` (at most ``within_s`` seconds)."""
    deadline = time.monotonic() + within_s
    seen: list[int] = []
    while time.monotonic() < deadline:
        answer = http.post("/v1/chat/completions", json=stream_body("echo", "ping"))
        seen.append(answer.status_code)
        if answer.status_code == wanted:
            return
        time.sleep(0.05)
    raise AssertionError(f"no stream answered {wanted} within {within_s} s: {seen[-5:]}")


def test_a_token_holds_at_most_its_cap_of_streams(http: httpx.Client) -> None:
    words = " ".join(f"w{i}" for i in range(100))
    with http.stream("POST", "/v1/chat/completions",
                     json=stream_body("echo-slow", words)) as held:
        assert held.status_code == 200
        lines = held.iter_lines()  # kept: a dropped iterator would close the stream
        assert next(lines).startswith("data: ")
        refused = http.post("/v1/chat/completions", json=stream_body("echo", "second"))
        assert refused.status_code == 429, refused.text
        error = refused.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["code"] == "too_many_streams"
        assert "1 stream" in error["message"]
        plain = http.post("/v1/chat/completions", json={
            "model": "echo", "messages": [{"role": "user", "content": "not streamed"}]})
        assert plain.status_code == 200, plain.text
    poll_stream_status(http, 200, within_s=10)


@contextlib.contextmanager
def unread_stream(url: str, token: str, body: bytes) -> Iterator[socket.socket]:
    """A stream request on a socket with a tiny receive buffer that nobody reads."""
    address = urlsplit(url)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect((address.hostname or "", address.port or 80))
    try:
        sock.sendall(
            f"POST /v1/chat/completions HTTP/1.1\r\nHost: {address.netloc}\r\n"
            f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        )
        yield sock
    finally:
        sock.close()


def read_to_end(sock: socket.socket) -> bytes:
    sock.settimeout(30)
    received = bytearray()
    while chunk := sock.recv(1 << 20):
        received += chunk
    return bytes(received)


def test_a_client_that_does_not_read_loses_its_stream_at_the_deadline(
    served: helpers.Served, http: httpx.Client
) -> None:
    # 2000 words of 4000 characters: megabytes of events, more than the socket buffers hold.
    words = " ".join(f"{i:04d}" + "x" * 3996 for i in range(2000))
    body = json.dumps(stream_body("echo-cut", words, max_tokens=2000)).encode()
    with unread_stream(served.url, served.admin_token or "", body) as sock:
        poll_stream_status(http, 429, within_s=10)  # the unread stream holds the token's slot
        poll_stream_status(http, 200, within_s=15)  # ... until its 3 s deadline
        received = read_to_end(sock)
    head, _, events = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200")
    assert b"data: " in events
    assert b"data: [DONE]" not in events  # cut short, not answered in full
    assert "did not read its stream" in served.log.read_text()

