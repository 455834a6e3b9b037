"""uvicorn glue: the listening socket, the server's run until Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import uvicorn

from resnets.errors import UsageError
from resnets.predict import Classifier
from resnets.serve.app import create_app


def listen(host: str, port: int) -> socket.socket:
    """A listening TCP socket on host:port (port 0: any free one), or a one-line UsageError."""
    try:
        family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
        sock = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise UsageError(f"cannot listen on {host}: {error.strerror or error}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as error:
        sock.close()
        raise UsageError(
            f"cannot listen on {host}:{port}: {error.strerror or error}; choose another --port "
            "or --host"
        ) from None
    return sock


def serve(
    classifier: Classifier,
    host: str = "127.0.0.1",
    port: int = 8000,
    on_ready: Callable[[str], None] = print,
    **limits: Any,
) -> None:
    """Serve `classifier` with uvicorn until Ctrl-C or SIGTERM, then return; `on_ready` gets
    one line with the address (the real port when `port` is 0) once the socket listens.

    uvicorn finishes the requests in flight (5 s at most), then raises the signal again for
    the handler it found; SIGTERM's is made a KeyboardInterrupt here, so either signal ends in
    a normal return instead of a killed process."""
    app = create_app(classifier, **limits)
    sock = listen(host, port)
    bound = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    config = uvicorn.Config(app, log_level="warning", access_log=False, timeout_graceful_shutdown=5)
    server = uvicorn.Server(config)
    on_ready(
        f"serving {classifier.network.model_name} ({classifier.spec.name}, "
        f"{len(classifier.classes)} classes) on {classifier.device} at http://{shown}:{bound}/ "
        "(Ctrl-C stops)"
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
