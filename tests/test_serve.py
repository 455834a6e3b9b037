"""`resnets serve`: the real server (uvicorn on a free loopback port, in a thread of this
process or as the `resnets serve` command) answering real HTTP requests.

The network is test_predict's tiny run on a folder of shapes. Where a test needs a batch to
last, the classifier's *network* is wrapped so its forward pass waits for the test to let it
go (`Gate`); the server's code is the one that ships.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import http.client
import io
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

for _module, _why in (("fastapi", "FastAPI"), ("uvicorn", "uvicorn"),
                      ("python_multipart", "python-multipart")):  # fmt: skip
    pytest.importorskip(_module, reason=f"{_why} is missing: pip install 'resnets[serve]'")

from test_end_to_end import CLASSES  # noqa: E402
from test_predict import picture, write_good  # noqa: E402

import resnets  # noqa: E402
from resnets.cli import build_parser  # noqa: E402
from resnets.explain import OVERLAY_SIDE  # noqa: E402
from resnets.predict import Classifier  # noqa: E402
from resnets.serve import Limits, create_app, listen, make_server  # noqa: E402
from resnets.serve.explaining import EXPLAIN_LIMIT  # noqa: E402
from resnets.weights import load_network  # noqa: E402

from helpers import SRC, run_cli, timeout  # noqa: E402

TIMEOUT = timeout(20.0)  # seconds any one request, start or stop may take before the test fails


# -- a real server and a real client --------------------------------------------------------


@contextmanager
def running(app: Any) -> Iterator[int]:
    """uvicorn serving `app` on a free loopback port in a thread; yields the port."""
    sock = listen("127.0.0.1", 0)
    server = make_server(app, grace_s=2)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + TIMEOUT
        while not server.started:
            assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(TIMEOUT)
        sock.close()
        assert not thread.is_alive(), "the server did not stop"


def call(
    port: int, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], Any]:
    """(status, headers, JSON body, or the text of any other body) of one request."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
    try:
        # a server that answers (413) and closes before the whole body is sent: read that answer
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        found = {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()
    if found.get("content-type", "").startswith("application/json"):
        return response.status, found, json.loads(data)
    return response.status, found, data.decode("utf-8", "replace")


def multipart(
    files: list[tuple[str, bytes]], field: str = "file", boundary: str = "b0undary-x7"
) -> tuple[bytes, dict[str, str]]:
    """A multipart/form-data body with one `field` part per (file name, bytes)."""
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{name}"\r\n'
        f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        for name, data in files
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def post_files(port: int, paths: list[Path], query: str = "") -> tuple[int, dict[str, str], Any]:
    body, headers = multipart([(p.name, p.read_bytes()) for p in paths])
    return call(port, "POST", f"/predict{query}", body, headers)


def healthy(port: int) -> dict[str, Any]:
    status, _, body = call(port, "GET", "/health")
    assert status == 200 and body["status"] == "ok"
    return body


def wait_until(port: int, key: str, value: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while healthy(port)[key] != value:
        assert time.monotonic() < deadline, f"/health never said {key} = {value}"
        time.sleep(0.01)


def same(answer: dict[str, Any], expected: list[tuple[str, float]]) -> None:
    """One image's answer has the expected classes in order, with their probabilities."""
    got = [(p["class"], p["probability"]) for p in answer["predictions"]]
    assert [name for name, _ in got] == [name for name, _ in expected]
    assert [p for _, p in got] == pytest.approx([p for _, p in expected], rel=1e-5, abs=1e-6)


# -- the network, the files ------------------------------------------------------------------


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """test_predict's good files: PNG, JPEG, BMP and WebP of several sizes and modes."""
    return write_good(tmp_path_factory.mktemp("images"))


@pytest.fixture(scope="module")
def port(shapes_classifier: Classifier) -> Iterator[int]:
    """One server with the default settings, for the tests that do not change them."""
    with running(create_app(shapes_classifier)) as port:
        yield port


class Gate(nn.Module):
    """A network whose forward pass waits until the test opens the gate, recording the size
    of each batch it was given (test only: it slows the model, not the server)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.opened = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.batches.append(len(x))
        self.entered.set()
        assert self.opened.wait(TIMEOUT), "the test never opened the gate"
        return self.model(x)


@pytest.fixture
def gated(shapes_run: Path) -> Iterator[tuple[Classifier, Gate]]:
    """A classifier of the same run whose batches wait for `gate.opened`."""
    slow = Classifier(load_network(shapes_run))
    gate = Gate(slow.model)
    slow.model = gate
    yield slow, gate
    gate.opened.set()  # never leave a server thread waiting


# -- answers --------------------------------------------------------------------------------


def test_predictions_equal_classifier_predict(
    port: int, shapes_classifier: Classifier, files: list[Path]
) -> None:
    status, _, body = post_files(port, files, "?top_k=2")
    assert status == 200, body
    expected = shapes_classifier.predict(files, top_k=2)
    assert body["model"] == shapes_classifier.network.model_name and body["time_ms"] > 0
    assert [r["file"] for r in body["results"]] == [p.name for p in files]
    for answer, prediction in zip(body["results"], expected, strict=True):
        same(answer, list(prediction.top))
    assert min(p for r in expected for _, p in r.top) > 1e-4  # not all 0 or 1: a real check


@pytest.mark.parametrize("name", ["rgb.png", "gray.jpg", "rgb.webp"])
def test_a_raw_image_body_is_predicted_as_the_file(
    port: int, shapes_classifier: Classifier, files: list[Path], name: str
) -> None:
    path = next(p for p in files if p.name == name)
    kind = {".png": "image/png", ".jpg": "image/jpeg", ".webp": "image/webp"}[path.suffix]
    status, _, body = call(port, "POST", "/predict", path.read_bytes(), {"Content-Type": kind})
    assert status == 200, body
    assert len(body["results"]) == 1 and body["results"][0]["file"] == "<image 0>"
    same(body["results"][0], list(shapes_classifier.predict(path, top_k=len(CLASSES))[0].top))


def test_a_file_name_is_only_a_label(
    port: int, shapes_classifier: Classifier, files: list[Path]
) -> None:
    """The name a client gives is echoed, never opened: the bytes sent are what is predicted."""
    body, headers = multipart([("/etc/hostname", files[1].read_bytes())])
    status, _, answer = call(port, "POST", "/predict", body, headers)
    assert status == 200 and answer["results"][0]["file"] == "/etc/hostname"
    same(answer["results"][0], list(shapes_classifier.predict(files[1])[0].top))
    raw = {"Content-Type": "image/png"}
    status, _, answer = call(port, "POST", "/predict", b"/etc/hostname", raw)
    assert status == 415 and "not an image" in answer["error"]


def test_info_health_page_and_schema(port: int, shapes_classifier: Classifier) -> None:
    status, _, info = call(port, "GET", "/info")
    assert status == 200
    assert info["model"] == shapes_classifier.network.model_name
    assert info["classes"] == list(CLASSES) and info["dataset"] == shapes_classifier.spec.name
    assert info["parameters"] == sum(p.numel() for p in shapes_classifier.model.parameters())
    assert info["input"]["channels"] == 3 and info["input"]["size"] == shapes_classifier.spec.size
    assert info["limits"] == Limits().__dict__
    assert info["version"] == resnets.__version__
    status, headers, page = call(port, "GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html")
    assert 'id="file"' in page and "predict" in page
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing from the internet
    status, _, schema = call(port, "GET", "/openapi.json")
    assert status == 200 and {"/predict", "/health", "/info"} <= set(schema["paths"])
    assert "multipart/form-data" in schema["paths"]["/predict"]["post"]["requestBody"]["content"]


def test_concurrent_requests_are_batched_and_answer_as_single_ones(
    gated: tuple[Classifier, Gate], files: list[Path]
) -> None:
    slow, gate = gated
    gate.opened.set()
    with running(create_app(slow, max_batch=8, max_wait_ms=0)) as port:
        singles = []
        for path in files:  # one after another: each is a batch of one
            status, _, body = post_files(port, [path])
            assert status == 200
            singles.append(body["results"][0])
        assert gate.batches == [1] * len(files)
        gate.batches.clear()
        gate.opened.clear()
        gate.entered.clear()
        with ThreadPoolExecutor(len(files)) as pool:
            first = pool.submit(post_files, port, [files[0]])
            assert gate.entered.wait(TIMEOUT)  # the first image alone holds the model...
            rest = [pool.submit(post_files, port, [path]) for path in files[1:]]
            wait_until(port, "waiting", len(files) - 1)  # ...while the others queue
            gate.opened.set()
            answers = [future.result(TIMEOUT) for future in [first, *rest]]
    assert gate.batches == [1, len(files) - 1]  # the seven waiting went as one batch
    for (status, _, body), single in zip(answers, singles, strict=True):
        assert status == 200
        assert body["results"][0]["file"] == single["file"]
        same(body["results"][0], [(p["class"], p["probability"]) for p in single["predictions"]])


def test_a_request_larger_than_max_batch_is_split(
    gated: tuple[Classifier, Gate], shapes_classifier: Classifier, files: list[Path]
) -> None:
    slow, gate = gated
    gate.opened.set()
    with running(create_app(slow, max_batch=3)) as port:
        status, _, body = post_files(port, files)
    assert status == 200 and gate.batches == [3, 3, 2]
    for answer, prediction in zip(body["results"], shapes_classifier.predict(files), strict=True):
        same(answer, list(prediction.top))


def test_health_answers_while_a_long_batch_runs(
    gated: tuple[Classifier, Gate], files: list[Path]
) -> None:
    slow, gate = gated
    with running(create_app(slow)) as port, ThreadPoolExecutor(1) as pool:
        pending = pool.submit(post_files, port, [files[0]])
        assert gate.entered.wait(TIMEOUT)
        started = time.monotonic()
        health = healthy(port)
        assert call(port, "GET", "/info")[0] == 200
        # not behind the batch, which never ends by itself
        assert time.monotonic() - started < timeout(2)
        assert health["running"] == 1 and health["in_server"] == 1 and not pending.done()
        gate.opened.set()
        assert pending.result(TIMEOUT)[0] == 200
        assert healthy(port)["in_server"] == 0


def test_a_full_queue_answers_503_and_recovers(
    gated: tuple[Classifier, Gate], files: list[Path]
) -> None:
    slow, gate = gated
    app = create_app(slow, max_batch=1, max_images=2, queue_limit=2)
    with running(app) as port, ThreadPoolExecutor(2) as pool:
        held = [pool.submit(post_files, port, [path]) for path in files[:2]]
        wait_until(port, "in_server", 2)
        for extra in ([files[2]], files[2:4]):
            status, headers, body = post_files(port, extra)
            assert status == 503 and headers["retry-after"] == "1"
            assert "busy" in body["error"] and body["status"] == 503
        assert healthy(port)["refused_busy"] == 2
        gate.opened.set()
        assert [future.result(TIMEOUT)[0] for future in held] == [200, 200]
        assert post_files(port, files[2:4])[0] == 200  # room again


# -- bad input ------------------------------------------------------------------------------


def png_header(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (and whose data is a few zero bytes): what a
    decompression bomb shows Pillow before any pixel is decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    chunks = chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return b"\x89PNG\r\n\x1a\n" + chunks


def encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt)
    return buffer.getvalue()


SMALL_LIMITS = {"max_bytes": 100_000, "max_images": 3, "max_pixels": 250_000, "queue_limit": 8}
PNG = encoded(picture((40, 30), "RGB", 1), "PNG")
JPEG = encoded(picture((120, 90), "RGB", 2), "JPEG")

# name -> (method, path, body, headers, status, words the error says)
BAD: dict[str, tuple[str, str, Any, dict[str, str], int, str]] = {
    "text-as-png": ("POST", "/predict", b"hello, not a picture", {"Content-Type": "image/png"},
                    415, "not an image"),
    "gif": ("POST", "/predict", encoded(picture((8, 8), "P", 3), "GIF"),
            {"Content-Type": "image/gif"}, 415, "PNG, JPEG, BMP, WEBP"),
    "truncated-png": ("POST", "/predict", PNG[: len(PNG) // 2], {"Content-Type": "image/png"},
                      400, "truncated"),
    "truncated-jpeg": ("POST", "/predict", JPEG[: len(JPEG) // 2], {"Content-Type": "image/jpeg"},
                       400, "truncated"),
    "empty-body": ("POST", "/predict", b"", {"Content-Type": "image/png"}, 400, "empty"),
    "no-content-type": ("POST", "/predict", PNG, {}, 415, "multipart/form-data"),
    "text-content-type": ("POST", "/predict", PNG, {"Content-Type": "text/plain"}, 415,
                          "Content-Type text/plain"),
    "over-max-bytes": ("POST", "/predict", b"\x89PNG" + bytes(150_000),
                       {"Content-Type": "image/png"}, 413, "100,000"),
    "over-max-bytes-chunked": ("POST", "/predict", "chunks", {"Content-Type": "image/png"}, 413,
                               "100,000"),
    "over-max-pixels": ("POST", "/predict", encoded(Image.new("L", (600, 500)), "PNG"),
                        {"Content-Type": "image/png"}, 413, "300,000 pixels"),
    "pillow-bomb-warning": ("POST", "/predict", png_header(10_000, 10_000),
                            {"Content-Type": "image/png"}, 413, "decompression bomb"),
    "pillow-bomb-error": ("POST", "/predict", png_header(30_000, 30_000),
                          {"Content-Type": "image/png"}, 413, "decompression bomb"),
    "empty-file-field": ("POST", "/predict", [("a.png", b"")], {}, 400, "a.png: empty"),
    "text-file-field": ("POST", "/predict", [("a.png", PNG), ("b.png", b"text")], {}, 415,
                        "b.png: not an image"),
    "too-many-images": ("POST", "/predict", [(f"{i}.png", PNG) for i in range(4)], {}, 413,
                        "more than 3 images"),
    "other-field": ("POST", "/predict", "field:image", {}, 400, "unexpected field 'image'"),
    "no-closing-boundary": ("POST", "/predict", "unclosed", {}, 400, "closing boundary"),
    "no-boundary": ("POST", "/predict", PNG, {"Content-Type": "multipart/form-data"}, 400,
                    "without a boundary"),
    "bad-top-k": ("POST", "/predict?top_k=0", PNG, {"Content-Type": "image/png"}, 400, "top_k"),
    "unknown-route": ("GET", "/predict/../../etc/passwd", None, {}, 404, "no such route"),
    "unknown-post": ("POST", "/upload", PNG, {"Content-Type": "image/png"}, 404,
                     "no such route: POST /upload"),
    "wrong-method": ("GET", "/predict", None, {}, 405, "Method Not Allowed"),
}  # fmt: skip


@pytest.fixture(scope="module")
def strict_port(shapes_classifier: Classifier) -> Iterator[int]:
    with running(create_app(shapes_classifier, **SMALL_LIMITS)) as port:
        yield port


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gets_its_status_and_the_server_keeps_serving(
    strict_port: int, case: str
) -> None:
    method, path, body, headers, expected, says = BAD[case]
    headers = dict(headers)
    if isinstance(body, list):  # multipart files
        body, headers = multipart(body)
    elif body == "field:image":
        body, headers = multipart([("a.png", PNG)], field="image")
    elif body == "unclosed":
        body, headers = multipart([("a.png", PNG)])
        body = body[: body.rindex(b"--b0undary")]
    elif body == "chunks":  # no Content-Length: the limit holds while reading
        body = iter([b"\x89PNG"] + [bytes(10_000)] * 15)
    status, _, answer = call(strict_port, method, path, body, headers)
    assert status == expected, answer
    assert answer["status"] == expected and says in answer["error"], answer
    assert "Traceback" not in answer["error"]
    health = healthy(strict_port)
    assert health["in_server"] == 0  # what the refused request held was given back
    status, _, answer = call(strict_port, "POST", "/predict", PNG, {"Content-Type": "image/png"})
    assert status == 200 and answer["results"][0]["predictions"][0]["class"] in CLASSES


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="queue_limit"):
        Limits(max_images=64, queue_limit=10)
    with pytest.raises(ValueError, match="Pillow's own limit"):
        Limits(max_pixels=10**10)
    with pytest.raises(ValueError, match="max_batch"):
        Limits(max_batch=0)
    with pytest.raises(ValueError, match="max_wait_ms"):
        Limits(max_wait_ms=float("inf"))


# -- the command ----------------------------------------------------------------------------


def test_the_command_line_defaults_are_the_librarys() -> None:
    args = build_parser().parse_args(["serve", "run"])
    assert {name: getattr(args, name) for name in Limits().__dict__} == Limits().__dict__
    assert (args.host, args.port) == ("127.0.0.1", 8000)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_resnets_serve_answers_then_stops_cleanly(
    shapes_run: Path, files: list[Path], stop: signal.Signals
) -> None:
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "resnets", "serve", str(shapes_run), "--port", "0",
               "--device", "cpu", "--max-batch", "4"]  # fmt: skip
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True) as process:  # fmt: skip
        try:
            assert process.stdout is not None
            line = process.stdout.readline()  # bounded: the process is killed below if stuck
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
            assert found, line + process.stderr.read() if process.stderr else line
            port = int(found.group(1))
            assert healthy(port)["in_server"] == 0
            status, _, body = post_files(port, files[:2])
            assert status == 200 and len(body["results"]) == 2
            assert call(port, "GET", "/info")[2]["limits"]["max_batch"] == 4
            process.send_signal(stop)
            assert process.wait(TIMEOUT) == 0
            assert process.stdout.read().strip() == "stopped"
        finally:
            if process.poll() is None:
                process.kill()


def test_a_port_in_use_is_one_line(shapes_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with listen("127.0.0.1", 0) as taken:
        port = str(taken.getsockname()[1])
        code, out, err = run_cli(
            capsys, "serve", str(shapes_run), "--port", port, "--device", "cpu"
        )
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert f"cannot listen on 127.0.0.1:{port}" in err and "--port" in err


def test_without_the_serve_extra_the_error_names_it(
    shapes_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "fastapi", None)  # `import fastapi` now fails
    monkeypatch.delitem(sys.modules, "resnets.serve")
    code, out, err = run_cli(capsys, "serve", str(shapes_run))
    assert code == 2 and out == "" and len(err.splitlines()) == 1
    assert "pip install 'resnets[serve]'" in err and "fastapi" in err


# -- the page, in a browser -----------------------------------------------------------------

# -- unlike the training data, and where the network looked ---------------------------------


@pytest.mark.parametrize("threshold", [-1e9, None], ids=["below-every-energy", "none-saved"])
def test_results_say_whether_an_image_is_unlike_the_training_data(
    shapes_run: Path, files: list[Path], threshold: float | None
) -> None:
    """The flag and the energy are Classifier.predict's: every image flagged with a threshold
    below every energy, none with no threshold saved (an older checkpoint), energy given."""
    network = load_network(shapes_run)
    assert network.ood is not None
    ood = None if threshold is None else dataclasses.replace(network.ood, threshold=threshold)
    classifier = Classifier(dataclasses.replace(network, ood=ood))
    expected = classifier.predict(files[:2])
    with running(create_app(classifier)) as port:
        status, _, body = post_files(port, files[:2])
    assert status == 200, body
    for answer, prediction in zip(body["results"], expected, strict=True):
        assert answer["unlike_training_data"] is (threshold is not None)
        assert answer["unlike_training_data"] == prediction.unlike_training
        assert answer["energy"] == pytest.approx(prediction.energy, rel=1e-5, abs=1e-5)
        assert "heatmap" not in answer


def test_explain_adds_a_heat_map_png_per_image(
    port: int, shapes_classifier: Classifier, files: list[Path]
) -> None:
    chosen = files[:2]
    status, _, body = post_files(port, chosen, "?explain=true&top_k=1")
    assert status == 200, body
    size = shapes_classifier.spec.size
    side = size * -(-OVERLAY_SIDE // size)  # enlarged by a whole factor, as predict --explain
    for answer, path in zip(body["results"], chosen, strict=True):
        data = base64.b64decode(answer["heatmap"], validate=True)
        with Image.open(io.BytesIO(data)) as heat:
            assert heat.format == "PNG" and heat.size == (side, side) and heat.mode == "RGB"
            served = np.asarray(heat, dtype=np.int16)
        (explained,) = shapes_classifier.explain(path)
        with Image.open(io.BytesIO(explained.heat_png())) as own:
            assert np.abs(served - np.asarray(own, dtype=np.int16)).max() <= 2
        assert answer["predictions"][0]["class"] == explained.prediction.label


def test_explain_is_refused_beyond_its_limit_or_when_malformed(
    port: int, files: list[Path]
) -> None:
    many = (files * EXPLAIN_LIMIT)[: EXPLAIN_LIMIT + 1]
    status, _, body = post_files(port, many, "?explain=true")
    assert status == 400 and f"at most {EXPLAIN_LIMIT} images" in body["error"]
    assert "\n" not in body["error"]
    status, _, body = post_files(port, many, "?explain=false")  # without it: answered
    assert status == 200 and len(body["results"]) == len(many)
    status, _, body = post_files(port, files[:1], "?explain=maybe")
    assert status == 400 and "explain 'maybe'" in body["error"]
    healthy(port)


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def test_the_page_shows_the_top_class_of_an_uploaded_png(
    port: int, shapes_classifier: Classifier, files: list[Path], tmp_path: Path
) -> None:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: pip install 'resnets[test]'"
    )
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    png = next(p for p in files if p.name == "rgb.png")
    expected = shapes_classifier.predict(png)[0]
    not_png = tmp_path / "notes.png"
    not_png.write_text("not a picture")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT * 1000)
            page.goto(f"http://127.0.0.1:{port}/")
            page.wait_for_function(
                "() => document.querySelector('#model').textContent.includes('3 cl')"
            )
            page.set_input_files("#file", str(png))
            page.wait_for_selector("#results .row")
            names = page.locator("#results .name").all_inner_texts()
            shown = page.locator("#results .prob").all_inner_texts()
            assert names == [name for name, _ in expected.top]
            assert shown == [f"{100 * p:.1f}%" for _, p in expected.top]
            assert page.eval_on_selector("#preview", "img => img.naturalWidth") == 40
            page.set_input_files("#file", str(not_png))
            page.wait_for_function(
                "() => document.getElementById('error').textContent.length > 0"
            )
            assert page.inner_text("#error").startswith("415: notes.png: not an image")
            assert page.locator("#results .row").count() == 0
        finally:
            browser.close()
