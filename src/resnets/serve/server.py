"""uvicorn glue: the listening socket, connections (a cap, a header timeout), the open-file
limit, logs of one line each at most once a second, and the run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from resnets.errors import UsageError, one_line
from resnets.predict import Classifier
from resnets.serve.admission import Admission
from resnets.serve.app import create_app
from resnets.serve.auth import LOOPBACK_NAMES, is_loopback
from resnets.serve.limits import Limits

GRACE_S = 5  # seconds the requests in flight get to finish once the server is told to stop
QUIET_LOGGERS = ("uvicorn", "uvicorn.error", "asyncio", "resnets.serve")
KEY_CHARS, LINE_CHARS = 40, 400  # what makes two log messages the same; the longest line
FD_HEADROOM = 64  # open files the process needs besides its connections (libraries, logs)
BACKLOG = 2048  # connections waiting to be accepted, and accepted at a time


def listen(host: str, port: int, backlog: int = BACKLOG) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), or a one-line UsageError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(backlog)
    except OSError as error:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port "
            "or --host"
        ) from None
    return sock


def raise_open_file_limit() -> tuple[int, int]:
    """The soft limit on open files raised to the hard one (each connection is one file);
    returns (soft, hard) as they are now. Nothing changes where the platform has no limits."""
    try:
        import resource  # noqa: PLC0415 (POSIX only)
    except ImportError:
        return (-1, -1)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 2**20)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft, hard


class OncePerSecond(logging.Filter):
    """Each log record in one line (an exception becomes ": Type: message", never a
    traceback), and the same message at most once a second, with a count of those left out:
    a flood of failures such as 'Too many open files' cannot fill a disk."""

    def __init__(self) -> None:
        super().__init__()
        self.last: dict[tuple[str, str], float] = {}
        self.skipped: dict[tuple[str, str], int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        # The same failure logs varying details (asyncio's callbacks carry their due times):
        # the first words, digits aside, make it the same message.
        key = (record.name, re.sub(r"[0-9]+", "", str(record.msg))[:KEY_CHARS])
        now = time.monotonic()
        if now - self.last.get(key, -1e9) < 1.0:
            self.skipped[key] = self.skipped.get(key, 0) + 1
            return False
        self.last[key] = now
        message = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            message += f": {type(record.exc_info[1]).__name__}: {one_line(record.exc_info[1])}"
        skipped = self.skipped.pop(key, 0)
        if skipped:
            message += f" ({skipped} more like it in the last second)"
        line = " ".join(message.split())
        record.msg = line if len(line) <= LINE_CHARS else line[: LINE_CHARS - 3] + "..."
        record.args = None
        record.exc_info = record.exc_text = record.stack_info = None
        return True


def quiet_logs() -> None:
    """OncePerSecond on the loggers of uvicorn, asyncio and this server (once)."""
    for name in QUIET_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, OncePerSecond) for f in logger.filters):
            logger.addFilter(OncePerSecond())


def _connections(max_connections: int, header_timeout: float) -> type[H11Protocol]:
    """uvicorn's HTTP/1.1 protocol with a cap on open connections (one past it is answered 503
    and closed at once, freeing its file) and a deadline for each request's headers (a client
    that opens a connection and sends nothing, or headers a byte at a time, is closed)."""
    body = json.dumps({"error": f"busy: {max_connections} connections open, the limit; try "
                       "again shortly", "status": 503}).encode()  # fmt: skip
    full = (
        b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        b"content-length: %d\r\nretry-after: 1\r\nconnection: close\r\n\r\n%s" % (len(body), body)
    )

    class Connection(H11Protocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(full)
                transport.close()
                return
            self._headers_due()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._headers_due()

        def _headers_due(self) -> None:
            self.loop.call_later(header_timeout, self._headers_late, self.cycle)

        def _headers_late(self, cycle: Any) -> None:
            idle = cycle is None or cycle.response_complete
            if idle and self.cycle is cycle and not self.transport.is_closing():
                self.transport.close()

    return Connection


class _Server(uvicorn.Server):
    """uvicorn's server, which first ends the bodies still being read when it stops (503),
    so a stalled client cannot hold up a shutdown."""

    def __init__(self, config: uvicorn.Config, admission: Admission) -> None:
        super().__init__(config)
        self.admission = admission

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.admission.stop()
        await super().shutdown(sockets)


def make_server(app: Any, grace_s: int = GRACE_S, backlog: int = BACKLOG) -> uvicorn.Server:
    """A uvicorn server for an app from `create_app`, with its limits on connections."""
    admission: Admission = app.state.admission
    limits: Limits = admission.limits
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=grace_s,
        http=_connections(limits.max_connections, limits.read_timeout),
        timeout_keep_alive=limits.keep_alive,  # type: ignore[arg-type]
        backlog=backlog,
    )  # fmt: skip
    quiet_logs()
    return _Server(config, admission)


def serve(
    classifier: Classifier,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] = print,
    *,
    token: str | None = None,
    no_auth: bool = False,
    allowed_hosts: Iterable[str] = (),
    cors_origins: Iterable[str] = (),
    **limits: Any,
) -> None:
    """Serve `classifier` with uvicorn until Ctrl-C or SIGTERM, then return; `on_ready` gets
    one line with the address (the real port when `port` is 0) once the socket listens.

    Beyond loopback a token is required unless `no_auth`. On a loopback bind only loopback
    Host names (and `allowed_hosts`) are answered; elsewhere any, unless `allowed_hosts`.

    uvicorn finishes the requests in flight (5 s at most), then raises the signal again for
    the handler it found; SIGTERM's is made a KeyboardInterrupt here, so either signal ends in
    a normal return instead of a killed process."""
    loopback = is_loopback(host)
    if not loopback and not token and not no_auth:
        raise UsageError(
            f"--host {host} answers other machines: set --token (or RESNETS_SERVE_TOKEN), or "
            "pass --no-auth to serve without one on purpose"
        )
    extra = list(allowed_hosts)
    hosts = [*LOOPBACK_NAMES, *extra] if loopback else (extra or None)
    soft, _ = raise_open_file_limit()
    # asyncio accepts up to `backlog` connections at a time before any is closed for being
    # past the cap: those, the cap and the process's own files must fit the open-file limit,
    # or accepting fails with EMFILE (and asyncio retries it thousands of times a second).
    backlog = BACKLOG if soft <= 0 else min(BACKLOG, max(16, (soft - FD_HEADROOM) // 4))
    room = soft - FD_HEADROOM - backlog
    wanted = limits.get("max_connections", Limits.max_connections)
    if soft > 0 and wanted > room:
        if room < 1:
            raise UsageError(f"this process may open only {soft} files: raise `ulimit -n`")
        limits["max_connections"] = room
        print(f"resnets serve: the open-file limit ({soft}) allows {room} connections, not "
              f"--max-connections {wanted}; raise `ulimit -n` for more",
              file=sys.stderr, flush=True)  # fmt: skip
    app = create_app(
        classifier, token=token, allowed_hosts=hosts, cors_origins=cors_origins, **limits
    )
    sock = listen(host, port, backlog)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    server = make_server(app, backlog=backlog)
    on_ready(
        f"serving {classifier.network.model_name} ({classifier.spec.name}, "
        f"{len(classifier.classes)} classes) on {classifier.device} at http://{shown}:{bound}/ "
        f"({'token required, ' if token else ''}Ctrl-C stops)"
    )
    in_main = threading.current_thread() is threading.main_thread()
    before = signal.signal(signal.SIGTERM, _interrupt) if in_main else None
    try:
        with sock:
            server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        if in_main:
            signal.signal(signal.SIGTERM, before)
    on_ready("stopped")


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt
