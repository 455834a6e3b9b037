"""`resnets serve`: every error is an answer. Malformed multipart bodies are 400, a failing
batch answers 500 to its own requests and the worker goes on, a dead worker makes /health
503, NaN outputs are a 500 in JSON, client errors leave no traceback in the log, and SIGTERM
with stalled bodies stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_serve import PNG, TIMEOUT, call, files, healthy, multipart, running  # noqa: F401
from torch import nn

from resnets.predict import Classifier
from resnets.serve import create_app
from resnets.weights import load_network

from helpers import SRC


def post_png(port: int) -> tuple[int, object]:
    status, _, body = call(port, "POST", "/predict", PNG, {"Content-Type": "image/png"})
    return status, body


@pytest.mark.parametrize("length", [70, 71, 257, 300])
def test_a_boundary_over_70_characters_is_400(shapes_classifier: Classifier, length: int) -> None:
    with running(create_app(shapes_classifier)) as port:
        body, headers = multipart([("a.png", PNG)], boundary="b" * length)
        status, _, answer = call(port, "POST", "/predict", body, headers)
        if length <= 70:
            assert status == 200, answer
        else:
            assert status == 400 and "RFC 2046" in answer["error"], answer
        assert post_png(port)[0] == 200


def test_a_multipart_body_without_parts_is_400(shapes_classifier: Classifier) -> None:
    with running(create_app(shapes_classifier)) as port:
        headers = {"Content-Type": "multipart/form-data; boundary=xyz"}
        status, _, answer = call(port, "POST", "/predict", b"--xyz--\r\n", headers)
        assert status == 400 and "`file` field" in answer["error"]


class Broken(nn.Module):
    """A network that fails as told: `fail` raises it on the next batch (then works again),
    `nan` makes every output NaN."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.fail: BaseException | None = None
        self.nan = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fail is not None:
            error, self.fail = self.fail, None
            raise error
        out = self.model(x)
        return out * float("nan") if self.nan else out


class Fatal(BaseException):
    """Not an Exception: what would end an unguarded worker."""


@pytest.fixture
def broken(shapes_run: Path) -> Iterator[tuple[Classifier, Broken]]:
    classifier = Classifier(load_network(shapes_run))
    net = Broken(classifier.model)
    classifier.model = net
    yield classifier, net


def test_a_failing_batch_answers_500_and_the_worker_goes_on(
    broken: tuple[Classifier, Broken],
) -> None:
    classifier, net = broken
    with running(create_app(classifier)) as port:
        net.fail = RuntimeError("out of memory, say")
        status, answer = post_png(port)
        assert status == 500 and "out of memory, say" in answer["error"]  # type: ignore[index]
        assert healthy(port)["in_server"] == 0
        assert post_png(port)[0] == 200  # the worker carries on


def test_a_dead_worker_makes_health_503(broken: tuple[Classifier, Broken]) -> None:
    classifier, net = broken
    with running(create_app(classifier)) as port:
        net.fail = Fatal()
        status, answer = post_png(port)
        assert status == 503 and "worker has stopped" in answer["error"]  # type: ignore[index]
        status, _, health = call(port, "GET", "/health")
        assert status == 503 and "stopped" in health["status"]
        assert post_png(port)[0] == 503  # answered at once, not left hanging


def test_nan_outputs_are_a_json_500(broken: tuple[Classifier, Broken]) -> None:
    classifier, net = broken
    net.nan = True
    with running(create_app(classifier)) as port:
        status, answer = post_png(port)
        assert status == 500 and "not a number" in answer["error"]  # type: ignore[index]
        net.nan = False
        assert post_png(port)[0] == 200


def test_client_errors_leave_no_traceback_and_sigterm_with_stalled_bodies_is_clean(
    shapes_run: Path,
) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "resnets", "serve", str(shapes_run), "--port", "0",
               "--device", "cpu"]  # fmt: skip
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        try:
            assert process.stdout is not None and process.stderr is not None
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", process.stdout.readline())
            assert found
            port = int(found.group(1))
            bad = [multipart([("a.png", PNG)], boundary="b" * 300),
                   (b"text", {"Content-Type": "image/png"}),
                   (PNG, {"Content-Type": "text/plain"}),
                   (PNG[:40], {"Content-Type": "image/png"})]  # fmt: skip
            for body, headers in bad:
                assert 400 <= call(port, "POST", "/predict", body, headers)[0] < 500
            stalled = []
            for _ in range(4):  # bodies promised and never sent
                sock = socket.create_connection(("127.0.0.1", port), TIMEOUT)
                sock.sendall(b"POST /predict HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: "
                             b"image/png\r\nContent-Length: 10000\r\n\r\nabc")  # fmt: skip
                stalled.append(sock)
            deadline = time.monotonic() + TIMEOUT
            while healthy(port)["reading"] < 4:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(TIMEOUT) == 0
            # Answered, not cut off when the grace ran out: a stalled body ends at the stop.
            answers = [sock.recv(4096) for sock in stalled]
            assert all(a.startswith(b"HTTP/1.1 503") and b"stopping" in a for a in answers)
            for sock in stalled:
                sock.close()
            log = process.stderr.read()
            assert "Traceback" not in log and "CancelledError" not in log, log
        finally:
            if process.poll() is None:
                process.kill()
