"""`resnets serve`: time and bytes. Stalled uploads hold only the bytes they sent and end
with 408 at the read timeout, so a good request beside them is answered at once; bodies in
flight, open connections and idle connections are bounded; the open-file limit is raised;
repeated failures are logged once a second in one line."""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_serve import PNG, TIMEOUT, call, healthy, running

from resnets.predict import Classifier
from resnets.serve import create_app
from resnets.serve.server import OncePerSecond, raise_open_file_limit

from helpers import SRC

STALLED = 64  # connections that promise a body and stall (loopback only)


def stall(port: int, head: bytes, sent: bytes) -> socket.socket:
    """A connection that sent request `head` and the first `sent` bytes of its body."""
    sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
    sock.sendall(head + sent)
    return sock


def raw_head(length: int | None) -> bytes:
    size = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (f"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: image/png\r\n"
            f"{size}\r\n\r\n").encode()  # fmt: skip


def answer(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


@contextmanager
def closing_all(socks: list[socket.socket]) -> Iterator[list[socket.socket]]:
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def wait_for(port: int, key: str, value: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while healthy(port)[key] != value:
        assert time.monotonic() < deadline, f"/health never said {key} = {value}"
        time.sleep(0.05)


def test_stalled_uploads_do_not_shut_out_a_good_request(shapes_classifier: Classifier) -> None:
    app = create_app(shapes_classifier, read_timeout=2.0, queue_limit=64)
    with running(app) as port, closing_all([]) as socks:
        for number in range(STALLED):  # half promise 10,000 bytes, half a chunked body
            length = 10_000 if number % 2 else None
            socks.append(stall(port, raw_head(length), b"abc" if length else b"3\r\nabc\r\n"))
        wait_for(port, "reading", STALLED)
        status, _, body = call(port, "POST", "/predict", PNG, {"Content-Type": "image/png"})
        assert status == 200, body  # answered while all of them still stall
        health = healthy(port)
        assert health["reading"] == STALLED and health["in_server"] == 0
        assert health["bytes_in_flight"] == 3 * STALLED  # what they sent, not what they promised
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(answer, socks))
        assert all(a.startswith(b"HTTP/1.1 408") and b"read timeout of 2 s" in a for a in answers)
        health = healthy(port)
        assert health["timed_out"] == STALLED and health["bytes_in_flight"] == 0


def test_bytes_in_flight_are_bounded(shapes_classifier: Classifier) -> None:
    app = create_app(shapes_classifier, max_bytes=60_000, max_bytes_in_flight=100_000)
    with running(app) as port, closing_all([]) as socks:
        socks.append(stall(port, raw_head(60_000), b"\x89PNG" + bytes(54_996)))
        wait_for(port, "bytes_in_flight", 55_000)
        status, headers, body = call(port, "POST", "/predict", bytes(50_000),
                                     {"Content-Type": "image/png"})  # fmt: skip
        assert status == 503 and "bytes of bodies" in body["error"], body
        assert headers["retry-after"] == "1"
        status, _, body = call(port, "POST", "/predict", PNG, {"Content-Type": "image/png"})
        assert status == 200, body  # a small one still fits
        socks[0].close()  # the stalled client goes away: its bytes are given back
        wait_for(port, "bytes_in_flight", 0)
        big = PNG + bytes(50_000 - len(PNG))  # trailing bytes after IEND are ignored by Pillow
        status, _, body = call(port, "POST", "/predict", big, {"Content-Type": "image/png"})
        assert status == 200, body


def test_connections_past_the_cap_are_answered_503_and_closed(
    shapes_classifier: Classifier,
) -> None:
    with running(create_app(shapes_classifier, max_connections=8)) as port:
        with closing_all([socket.create_connection(("127.0.0.1", port), TIMEOUT)
                          for _ in range(8)]):  # fmt: skip
            extra = socket.create_connection(("127.0.0.1", port), TIMEOUT)
            with extra:
                refused = answer(extra)
            assert refused.startswith(b"HTTP/1.1 503") and b"8 connections open" in refused
            assert b"application/json" in refused
        deadline = time.monotonic() + TIMEOUT
        while (status := call(port, "GET", "/health")[0]) != 200:  # room again once closed
            assert time.monotonic() < deadline, status
            time.sleep(0.05)


def test_idle_connections_are_closed(shapes_classifier: Classifier) -> None:
    app = create_app(shapes_classifier, read_timeout=1.0, keep_alive=0.5)
    with running(app) as port:
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as silent:
            assert silent.recv(100) == b""  # no request within the read timeout: closed
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as slow:
            slow.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # headers never end
            assert slow.recv(100) == b""
        with socket.create_connection(("127.0.0.1", port), TIMEOUT) as kept:
            kept.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            assert answer(kept).startswith(b"HTTP/1.1 200")  # then closed after keep-alive


def test_the_open_file_limit_is_raised() -> None:
    resource = pytest.importorskip("resource")
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    soft, hard = before
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))
        raised, _ = raise_open_file_limit()
        now = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert raised == now and now > 256
        assert now == hard or hard == resource.RLIM_INFINITY
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


def test_a_flood_of_failures_is_logged_once_a_second_in_one_line() -> None:
    logger = logging.getLogger("resnets.test.flood")
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.addFilter(OncePerSecond())
    logger.propagate = False
    try:
        error = OSError(errno.EMFILE, "Too many open files")
        for _ in range(2000):
            try:
                raise error
            except OSError:
                logger.exception("socket.accept() out of system resource")
        time.sleep(1.05)
        logger.error("socket.accept() out of system resource", exc_info=error)
    finally:
        logger.removeHandler(handler)
    assert 2 <= len(records) <= 4  # one a second, however many failures
    lines = [handler.format(r) for r in records]
    assert all("\n" not in line and "Too many open files" in line for line in lines)
    assert "more like it" in lines[-1]


@pytest.mark.slow
def test_a_small_open_file_limit_lowers_the_cap_instead_of_flooding_the_log(
    shapes_run: Path, tmp_path: Path
) -> None:
    """The finding: connections past the open-file limit made accepting fail (EMFILE) and
    filled the log. With a hard limit of 128, the server caps connections below it (saying so
    in one line), answers the rest 503, logs no failure, and serves once they are gone."""
    resource = pytest.importorskip("resource")

    def small_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "resnets", "serve", str(shapes_run), "--port", "0",
               "--device", "cpu", "--max-connections", "1000"]  # fmt: skip
    log_path = tmp_path / "server.log"
    with log_path.open("w") as log_file, subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=log_file, text=True,
        preexec_fn=small_limit,
    ) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", process.stdout.readline())
            assert found
            port = int(found.group(1))
            with closing_all([]) as socks:
                for _ in range(200):  # loopback, bounded
                    socks.append(socket.create_connection(("127.0.0.1", port), TIMEOUT))
                refused = answer(socks[-1])
                assert refused.startswith(b"HTTP/1.1 503") and b"48 connections" in refused
            deadline = time.monotonic() + TIMEOUT
            while True:  # the connections are gone: it answers again
                with contextlib.suppress(OSError):
                    if call(port, "GET", "/health")[0] == 200:
                        break
                assert time.monotonic() < deadline, "the server did not recover"
                time.sleep(0.2)
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == 0
        finally:
            if process.poll() is None:
                process.kill()
    log = log_path.read_text()
    assert log.splitlines()[0].startswith("resnets serve: the open-file limit (128) allows 48")
    assert "Too many open files" not in log and "Traceback" not in log, log[-2000:]
