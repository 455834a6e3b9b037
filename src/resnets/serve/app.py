"""The FastAPI application: routes, the schema of /predict, and every refusal as JSON."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import asdict
from importlib import resources
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from starlette.exceptions import HTTPException

from resnets.errors import one_line
from resnets.predict import Classifier
from resnets.serve.decoding import FORMATS
from resnets.serve.limits import NAME_LIMIT, ClientError, Limits
from resnets.serve.uploads import read_uploads
from resnets.serve.worker import Batcher


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
    state: dict[str, Batcher] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        batcher = Batcher(classifier, limits)
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
