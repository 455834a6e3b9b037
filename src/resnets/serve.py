"""A trained network behind HTTP: `resnets serve RUN`, or `create_app(classifier)` for any
ASGI server. Needs the serve extra (FastAPI, uvicorn, python-multipart).

    POST /predict   images in, the top-k classes of each out (JSON)
    GET  /health    answers while a batch runs: {"status": "ok", ...}
    GET  /info      model, classes, input spec, parameter count, version, limits
    GET  /          a page to try it in the browser (static/index.html, shipped in the package)
    GET  /openapi.json   the schema, from FastAPI

How a request goes. It is admitted only while fewer than `queue_limit` images are in the
server (being read, decoded, waiting or in a batch); otherwise it is answered 503 with
Retry-After at once, before its body is read, so overload costs no memory. Its body is read
in memory up to `max_bytes` (413 beyond, by Content-Length or while reading), as raw bytes
with an image/* Content-Type or as multipart/form-data with one `file` field per image (at
most `max_images`). Each image is decoded from those bytes alone (no file is ever opened or
written for a client) on one decoding thread, exactly as `Classifier.predict` decodes a file,
after its header passed the pixel limit (`max_pixels`, 413). One worker gathers the waiting
images into batches of up to `max_batch`, waiting at most `max_wait_ms` for more once the
first arrived, and runs each batch on an inference thread, so the event loop keeps answering.

Every refusal is JSON `{"error": "...", "status": N}` with the right status, and the server
keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import math
import signal
import socket
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import torch
from PIL import Image

from resnets.data.folder import UNREADABLE, truncated_images_refused
from resnets.errors import UsageError, one_line
from resnets.predict import Classifier, ImageError

try:
    import uvicorn
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse
    from python_multipart.exceptions import MultipartParseError
    from python_multipart.multipart import MultipartParser, parse_options_header
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect
except ImportError as missing:
    raise UsageError(
        f"resnets serve needs the serve extra ({missing.name} is not installed): "
        "pip install 'resnets[serve]'"
    ) from None

# The formats a client may send: those the image-folder reader takes. Restricting Pillow's
# choice also keeps out formats whose plugins run programs (EPS runs Ghostscript).
FORMATS = ("PNG", "JPEG", "BMP", "WEBP")
NAME_LIMIT = 200  # characters of a client's file name echoed back


@dataclass(frozen=True)
class Limits:
    """What one server accepts and how it batches; `resnets serve` flags of the same names."""

    max_batch: int = 32  # images per forward pass
    max_wait_ms: float = 5.0  # how long a batch waits for more images once it has one
    max_images: int = 64  # images per request
    max_bytes: int = 16 * 2**20  # request body
    max_pixels: int = 40_000_000  # width x height of one image, checked on its header
    queue_limit: int = 256  # images in the server at once; more are answered 503
    top_k: int = 5  # classes per image unless the request asks (?top_k=K)

    def __post_init__(self) -> None:
        for name, value in asdict(self).items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or value < 0:
                raise UsageError(f"{name} must be a finite number >= 0, not {value!r}")
            if name != "max_wait_ms" and (not isinstance(value, int) or value < 1):
                raise UsageError(f"{name} must be a positive whole number, not {value!r}")
        if Image.MAX_IMAGE_PIXELS is not None and self.max_pixels > Image.MAX_IMAGE_PIXELS:
            raise UsageError(
                f"max_pixels ({self.max_pixels:,}) is over Pillow's own limit "
                f"({Image.MAX_IMAGE_PIXELS:,}), which refuses such images anyway"
            )
        if self.queue_limit < self.max_images:
            raise UsageError(
                f"queue_limit ({self.queue_limit}) must be at least max_images "
                f"({self.max_images}), or a full request could never be admitted"
            )


class ClientError(Exception):
    """A request the server refuses: the HTTP status and one line saying why."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


@dataclass
class _Waiting:
    """One decoded image waiting for a batch, and where its probabilities go."""

    pixels: torch.Tensor
    result: asyncio.Future[torch.Tensor]


@dataclass
class _Counts:
    """What /health reports; changed only on the event loop."""

    admitted: int = 0  # images of requests in the server
    batches: int = 0
    images: int = 0
    refused_busy: int = 0
    running: int = 0  # images in the batch on the inference thread now
    started: float = field(default_factory=time.monotonic)


class _Batcher:
    """The bounded admission, the queue of decoded images and the one worker that batches
    them: one batch on the inference thread at a time, the next gathered meanwhile."""

    def __init__(self, classifier: Classifier, limits: Limits) -> None:
        self.classifier = classifier
        self.limits = limits
        self.counts = _Counts()
        self.queue: asyncio.Queue[_Waiting] = asyncio.Queue()
        # One thread each: Pillow's truncated-image flag and warning filters are process-wide,
        # and a single decoder also holds at most one full-size image in memory at a time.
        self.decoder = ThreadPoolExecutor(1, "resnets-decode")
        self.runner = ThreadPoolExecutor(1, "resnets-infer")
        self.worker: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.worker = asyncio.get_running_loop().create_task(self._work())

    async def stop(self) -> None:
        if self.worker is not None:
            self.worker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.worker
        # A batch still running finishes on its thread; nobody waits for its answer.
        self.decoder.shutdown(wait=False, cancel_futures=True)
        self.runner.shutdown(wait=False, cancel_futures=True)

    def admit(self, images: int) -> None:
        """Count `images` more in the server, or refuse them with 503 when that would pass
        the queue limit."""
        if self.counts.admitted + images > self.limits.queue_limit:
            self.counts.refused_busy += 1
            raise ClientError(
                503,
                f"busy: {self.counts.admitted} images in the server, the limit is "
                f"{self.limits.queue_limit}; try again shortly",
                {"Retry-After": "1"},
            )
        self.counts.admitted += images

    def release(self, images: int) -> None:
        self.counts.admitted -= images

    async def decode(self, uploads: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.decoder, self._decode_all, uploads)

    def _decode_all(self, uploads: list[tuple[str, bytes]]) -> list[torch.Tensor]:
        return [decode_upload(self.classifier, data, name, self.limits.max_pixels)
                for name, data in uploads]  # fmt: skip

    async def probabilities(self, pixels: list[torch.Tensor]) -> list[torch.Tensor]:
        """Each image's class probabilities, computed in whatever batches the worker makes."""
        loop = asyncio.get_running_loop()
        waiting = [_Waiting(p, loop.create_future()) for p in pixels]
        for item in waiting:
            self.queue.put_nowait(item)  # bounded by admit(), not by the queue
        return list(await asyncio.gather(*(item.result for item in waiting)))

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = [await self.queue.get()]
            deadline = loop.time() + self.limits.max_wait_ms / 1000
            while len(batch) < self.limits.max_batch:
                if not self.queue.empty():
                    batch.append(self.queue.get_nowait())
                    continue
                left = deadline - loop.time()
                if left <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self.queue.get(), left))
                except asyncio.TimeoutError:
                    break
            batch = [item for item in batch if not item.result.done()]
            if not batch:
                continue
            pixels = torch.stack([item.pixels for item in batch])
            self.counts.running = len(batch)
            try:
                probabilities = await loop.run_in_executor(self.runner, self._infer, pixels)
            except Exception as error:  # the model failed: each waiting request answers 500
                for item in batch:
                    if not item.result.done():
                        item.result.set_exception(error)
                continue
            finally:
                self.counts.running = 0
            self.counts.batches += 1
            self.counts.images += len(batch)
            for item, row in zip(batch, probabilities, strict=True):
                if not item.result.done():
                    item.result.set_result(row)

    @torch.inference_mode()
    def _infer(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier.logits(pixels).softmax(1).cpu()


def decode_upload(classifier: Classifier, data: bytes, name: str, max_pixels: int) -> torch.Tensor:
    """One uploaded image as the uint8 (C, S, S) tensor the classifier takes, decoded from
    `data` the way `Classifier.predict` decodes a file (JPEGs drafted at reduced scale too).

    Raises ClientError: 400 empty, truncated or damaged; 415 not an image in FORMATS; 413 more
    pixels than `max_pixels`. Pillow's own decompression-bomb warning is made an error here,
    so it can never pass as a log line while the image is decoded anyway.
    """
    if not data:
        raise ClientError(400, f"{name}: empty, not an image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=FORMATS)
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as error:
        raise ClientError(413, f"{name}: too many pixels ({error})") from None
    except Image.UnidentifiedImageError:
        raise ClientError(
            415, f"{name}: not an image this server reads ({', '.join(FORMATS)})"
        ) from None
    except UNREADABLE as error:
        raise ClientError(400, f"{name}: a damaged image ({one_line(error)})") from None
    with image:
        width, height = image.size
        if width * height > max_pixels:
            raise ClientError(
                413, f"{name}: {width}x{height} is {width * height:,} pixels, over this "
                f"server's limit of {max_pixels:,}",
            )  # fmt: skip
        try:
            with truncated_images_refused():
                image.draft(None, (classifier.spec.size, classifier.spec.size))
                image.load()
        except UNREADABLE as error:
            raise ClientError(
                400, f"{name}: a damaged or truncated image ({one_line(error)})"
            ) from None
        try:
            return classifier.decode(image)
        except ImageError as error:
            raise ClientError(400, f"{name}: {error}") from None


class _Multipart:
    """Collects the `file` fields of a multipart/form-data body fed to it chunk by chunk, in
    memory, refusing any other field and more than `max_images` files as they begin."""

    def __init__(self, boundary: bytes, max_images: int) -> None:
        self.max_images = max_images
        self.files: list[tuple[str, bytes]] = []
        self.ended = False
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, str] = {}
        self._data = bytearray()
        callbacks: dict[str, Callable[..., None]] = {
            "on_part_begin": self._part_begin, "on_part_data": self._part_data,
            "on_part_end": self._part_end, "on_header_field": self._header_field_data,
            "on_header_value": self._header_value_data, "on_header_end": self._header_end,
            "on_end": self._end,
        }  # fmt: skip
        self.parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]

    def write(self, chunk: bytes) -> None:
        try:
            self.parser.write(chunk)
        except MultipartParseError as error:
            raise ClientError(400, f"a malformed multipart body ({error})") from None

    def finish(self) -> list[tuple[str, bytes]]:
        if not self.ended:
            raise ClientError(400, "the multipart body ends before its closing boundary")
        if not self.files:
            raise ClientError(400, "no `file` field: send each image as a `file` field")
        return self.files

    def _part_begin(self) -> None:
        self._headers = {}
        self._data = bytearray()

    def _header_field_data(self, data: bytes, start: int, end: int) -> None:
        self._header_field += data[start:end]

    def _header_value_data(self, data: bytes, start: int, end: int) -> None:
        self._header_value += data[start:end]

    def _header_end(self) -> None:
        name = self._header_field.decode("latin-1").lower()
        self._headers[name] = self._header_value.decode("latin-1")
        self._header_field.clear()
        self._header_value.clear()
        if name != "content-disposition":
            return
        _, options = parse_options_header(self._headers[name])
        field_name = options.get(b"name", b"").decode("latin-1")
        if field_name != "file":
            raise ClientError(
                400, f"unexpected field {field_name[:NAME_LIMIT]!r}: send each image as a "
                "`file` field",
            )  # fmt: skip
        if len(self.files) == self.max_images:
            raise ClientError(413, f"more than {self.max_images} images in one request")
        filename = options.get(b"filename", b"").decode("utf-8", "replace")
        self.files.append((filename[:NAME_LIMIT] or f"<image {len(self.files)}>", b""))

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._data += data[start:end]

    def _part_end(self) -> None:
        if not self.files or "content-disposition" not in self._headers:
            raise ClientError(400, "a multipart part without Content-Disposition")
        self.files[-1] = (self.files[-1][0], bytes(self._data))
        self._data = bytearray()

    def _end(self) -> None:
        self.ended = True


async def read_uploads(request: Request, limits: Limits) -> list[tuple[str, bytes]]:
    """The (name, bytes) of each image in the request's body, read in memory within
    `limits.max_bytes` (413), from multipart `file` fields or one raw image/* body."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ClientError(400, f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > limits.max_bytes:
            raise ClientError(
                413, f"the body is {int(declared):,} bytes, over this server's limit of "
                f"{limits.max_bytes:,}",
            )  # fmt: skip
    kind, options = parse_options_header(request.headers.get("content-type"))
    multipart: _Multipart | None = None
    if kind == b"multipart/form-data":
        if not options.get(b"boundary"):
            raise ClientError(400, "a multipart/form-data Content-Type without a boundary")
        multipart = _Multipart(options[b"boundary"], limits.max_images)
    elif not kind.startswith(b"image/"):
        shown = kind.decode("latin-1")[:60] or "none"
        raise ClientError(
            415, f"Content-Type {shown}: send multipart/form-data with one `file` field per "
            "image, or one image as the body with an image/* Content-Type",
        )  # fmt: skip
    body = bytearray()
    total = 0
    try:
        async for chunk in request.stream():
            total += len(chunk)
            if total > limits.max_bytes:
                raise ClientError(413, f"the body is over this server's limit of "
                                  f"{limits.max_bytes:,} bytes")  # fmt: skip
            if multipart is not None:
                multipart.write(chunk)
            else:
                body += chunk
    except ClientDisconnect:
        raise ClientError(400, "the client went away before sending the whole body") from None
    if multipart is not None:
        return multipart.finish()
    if not body:
        raise ClientError(400, "an empty body: send an image")
    return [("<image 0>", bytes(body))]


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status, headers=headers)


_PREDICT_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {"file": {"type": "array",
                                            "items": {"type": "string", "format": "binary"}}},
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
        },
    }
}  # fmt: skip


def create_app(
    classifier: Classifier,
    *,
    max_batch: int = Limits.max_batch,
    max_wait_ms: float = Limits.max_wait_ms,
    max_images: int = Limits.max_images,
    max_bytes: int = Limits.max_bytes,
    max_pixels: int = Limits.max_pixels,
    queue_limit: int = Limits.queue_limit,
    top_k: int = Limits.top_k,
) -> FastAPI:
    """The FastAPI application serving `classifier` (see the module's docstring). The batching
    worker starts and stops with the application's lifespan."""
    limits = Limits(max_batch, max_wait_ms, max_images, max_bytes, max_pixels, queue_limit, top_k)
    page = resources.files("resnets").joinpath("static/index.html").read_text("utf-8")
    network = classifier.network
    parameters = sum(p.numel() for p in classifier.model.parameters())
    state: dict[str, _Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher = _Batcher(classifier, limits)
        batcher.start()
        state["batcher"] = batcher
        try:
            yield
        finally:
            await batcher.stop()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and nothing this
    # server shows may need the internet. The schema itself is at /openapi.json.
    app = FastAPI(
        title="resnets", version=_version(), lifespan=lifespan, docs_url=None, redoc_url=None,
        description=f"{network.model_name} trained on {classifier.spec.name}: POST images to "
        "/predict for their most probable classes.",
    )  # fmt: skip

    @app.exception_handler(ClientError)
    async def refused(_: Request, error: ClientError) -> JSONResponse:
        return _error(error.status, error.message, error.headers)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, error: HTTPException) -> JSONResponse:
        message = str(error.detail)
        if error.status_code == 404:
            message = f"no such route: {request.method} {request.url.path[:NAME_LIMIT]}"
        return _error(error.status_code, message, dict(error.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, error: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in error.errors()
        )
        return _error(400, problems)

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        return _error(500, f"the server failed: {one_line(error)}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Answers at once, even while a batch runs: what is in the server now."""
        batcher = state["batcher"]
        counts = batcher.counts
        return {
            "status": "ok", "in_server": counts.admitted, "waiting": batcher.queue.qsize(),
            "running": counts.running, "batches": counts.batches, "images": counts.images,
            "refused_busy": counts.refused_busy,
            "uptime_s": round(time.monotonic() - counts.started, 3),
        }  # fmt: skip

    @app.get("/info")
    async def info() -> dict[str, Any]:
        """The model, its classes and input, and this server's limits."""
        spec = classifier.spec
        return {
            "model": network.model_name, "model_kwargs": network.model_kwargs,
            "dataset": spec.name, "classes": list(spec.classes), "parameters": parameters,
            "input": {"channels": spec.channels, "size": spec.size,
                      "network_size": classifier.image_size, "mean": list(spec.mean),
                      "std": list(spec.std), "formats": list(FORMATS)},
            "device": str(classifier.device), "version": _version(), "limits": asdict(limits),
        }  # fmt: skip

    @app.post("/predict", openapi_extra=_PREDICT_BODY)
    async def predict(
        request: Request, top_k: int | None = Query(None, ge=1, description="classes per image")
    ) -> dict[str, Any]:
        """The most probable classes of each image sent: multipart/form-data with one `file`
        field per image, or one image as the body with an image/* Content-Type."""
        started = time.perf_counter()
        batcher = state["batcher"]
        batcher.admit(1)  # before reading the body, so overload is refused cheaply
        admitted = 1
        try:
            uploads = await read_uploads(request, limits)
            if len(uploads) > 1:
                batcher.admit(len(uploads) - 1)
                admitted = len(uploads)
            pixels = await batcher.decode(uploads)
            try:
                rows = await batcher.probabilities(pixels)
            except Exception as error:
                raise ClientError(500, f"the model failed: {one_line(error)}") from error
        finally:
            batcher.release(admitted)
        k = min(top_k or limits.top_k, len(classifier.classes))
        results = []
        for (name, _), row in zip(uploads, rows, strict=True):
            values, indices = row.topk(k)
            results.append({
                "file": name,
                "predictions": [{"class": classifier.classes[i], "probability": p}
                                for i, p in zip(indices.tolist(), values.tolist(), strict=True)],
            })  # fmt: skip
        return {
            "model": network.model_name, "dataset": classifier.spec.name,
            "time_ms": round((time.perf_counter() - started) * 1000, 3), "results": results,
        }  # fmt: skip

    return app


def _version() -> str:
    from resnets import __version__  # noqa: PLC0415 (resnets/__init__ imports the models)

    return __version__


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
