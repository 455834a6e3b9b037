"""The FastAPI application: routes, the schema of every answer, and every refusal as JSON
`{"error": "...", "status": N}`."""

from __future__ import annotations

import contextlib
import html
import io
import re
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import asdict
from importlib import resources
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import HTMLResponse, JSONResponse, Response
from PIL import Image, ImageDraw
from starlette.exceptions import HTTPException

from resnets import __version__
from resnets.errors import one_line
from resnets.predict import UNLIKE, Classifier
from resnets.serve.admission import Admission
from resnets.serve.auth import LOOPBACK_NAMES, Guard, page_policy
from resnets.serve.decoding import FORMATS, Decoder
from resnets.serve.explaining import Explainer, check_count, explain_flag
from resnets.serve.limits import NAME_LIMIT, ClientError, Limits
from resnets.serve.schema import HEALTH_RESPONSES, INFO_RESPONSES, PREDICT_EXTRA
from resnets.serve.uploads import Held, read_uploads
from resnets.serve.worker import Batcher


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": message, "status": status}, status, headers=headers)


def _icon() -> bytes:
    """A 16x16 favicon drawn here (three bars, the page's colour), so /favicon.ico is no 404."""
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    for row, width in enumerate((14, 9, 5)):
        draw.rectangle((1, 2 + 5 * row, width, 4 + 5 * row), fill=(59, 111, 216, 255))
    buffer = io.BytesIO()
    image.save(buffer, "ICO", sizes=[(16, 16)])
    return buffer.getvalue()


def _top_k(request: Request, default: int) -> int:
    values = request.query_params.getlist("top_k")
    if not values:
        return default
    if len(values) > 1 or not re.fullmatch(r"[0-9]{1,9}", values[0]) or int(values[0]) < 1:
        raise ClientError(400, f"top_k {values[-1][:20]!r}: give one whole number, 1 or more")
    return int(values[0])


def create_app(
    classifier: Classifier,
    *,
    token: str | None = None,
    allowed_hosts: Iterable[str] | None = LOOPBACK_NAMES,
    cors_origins: Iterable[str] = (),
    **limits: Any,
) -> FastAPI:
    """The FastAPI application serving `classifier` (see the package's docstring); `limits`
    are Limits' fields. `token`: /predict and /info need it as a bearer token.
    `allowed_hosts`: the Host names answered (None: any; the default suits a loopback bind).
    `cors_origins`: web origins allowed to call the API from a browser (none by default).
    The decoding threads and the batching worker start and stop with the app's lifespan."""
    settings = Limits(**limits)
    page = resources.files("resnets").joinpath("static/index.html").read_text("utf-8")
    page = page.replace("__UNLIKE__", html.escape(UNLIKE))
    icon = _icon()
    network = classifier.network
    parameters = sum(p.numel() for p in classifier.model.parameters())
    admission = Admission(settings)
    parts: dict[str, Any] = {}

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        decoder = Decoder(classifier, settings, admission.counts)
        batcher = Batcher(classifier, settings, admission.counts)
        explainer = Explainer(classifier)
        batcher.start()
        parts.update(decoder=decoder, batcher=batcher, explainer=explainer)
        try:
            yield
        finally:
            await batcher.stop()
            decoder.shutdown()
            explainer.shutdown()

    # No /docs or /redoc: FastAPI's pages load their scripts from a CDN, and nothing this
    # server shows may need the internet. The schema itself is at /openapi.json.
    app = FastAPI(
        title="resnets", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None,
        description=f"{network.model_name} trained on {classifier.spec.name}: POST images to "
        "/predict for their most probable classes.",
    )  # fmt: skip
    app.state.admission = admission  # the server ends bodies still being read when it stops
    app.add_middleware(
        Guard, token=token, allowed_hosts=allowed_hosts, page_policy=page_policy(page)
    )
    origins = list(cors_origins)
    if origins:  # outermost, so a browser's preflight is answered before the token is asked
        app.add_middleware(
            CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"],
            allow_headers=["Authorization", "Content-Type"],
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
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                             for e in error.errors())  # fmt: skip
        return _error(400, problems)

    @app.exception_handler(Exception)
    async def failed(_: Request, error: Exception) -> JSONResponse:
        return _error(500, f"the server failed: {one_line(error)}")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/favicon.ico", include_in_schema=False)
    async def favicon() -> Response:
        return Response(icon, media_type="image/x-icon",
                        headers={"Cache-Control": "max-age=86400"})  # fmt: skip

    @app.get("/health", responses=HEALTH_RESPONSES)
    async def health() -> JSONResponse:
        """Answers at once, even while a batch runs: what is in the server now; 503 when the
        batching worker has stopped (the server cannot answer /predict)."""
        batcher: Batcher = parts["batcher"]
        counts = admission.counts
        body = {
            "status": "ok" if batcher.alive else "the batching worker has stopped",
            "in_server": counts.admitted, "bytes_in_flight": counts.bytes_in_flight,
            "reading": counts.reading, "decoding": counts.decoding,
            "waiting": batcher.queue.qsize(),
            "running": counts.running, "batches": counts.batches, "images": counts.images,
            "refused_busy": counts.refused_busy, "timed_out": counts.timed_out,
            "uptime_s": round(time.monotonic() - counts.started, 3),
        }  # fmt: skip
        return JSONResponse(body, 200 if batcher.alive else 503)

    @app.get("/info", responses=INFO_RESPONSES)
    async def info() -> dict[str, Any]:
        """The model, its classes and input, and this server's limits."""
        spec = classifier.spec
        return {
            "model": network.model_name, "model_kwargs": network.model_kwargs,
            "dataset": spec.name, "classes": list(spec.classes), "parameters": parameters,
            "input": {"channels": spec.channels, "size": spec.size,
                      "network_size": classifier.image_size, "mean": list(spec.mean),
                      "std": list(spec.std), "formats": list(FORMATS)},
            "device": str(classifier.device), "version": __version__,
            "limits": asdict(settings), "token": token is not None,
        }  # fmt: skip

    @app.post("/predict", openapi_extra=PREDICT_EXTRA, response_class=JSONResponse)
    async def predict(request: Request) -> JSONResponse:
        """The most probable classes of each image sent: multipart/form-data with one `file`
        field per image, or one image as the body (Content-Type image/png, image/jpeg,
        image/bmp or image/webp). Each result says whether the image is unlike the training
        data (its energy score above the network's threshold); with ?explain=true, also where
        the network looked (a Grad-CAM heat map over the image, PNG in base64)."""
        started = time.perf_counter()
        k = min(_top_k(request, settings.top_k), len(classifier.classes))
        explain = explain_flag(request.query_params.getlist("explain"))
        decoder: Decoder = parts["decoder"]
        batcher: Batcher = parts["batcher"]
        held = Held()
        heatmaps: list[str] = []
        try:
            uploads = await read_uploads(request, settings, admission, held)
            if explain:
                check_count(len(uploads))
            names = [name for name, _ in uploads]
            pixels = await decoder.decode(uploads)
            del uploads
            admission.give_bytes(held.bytes)  # the bodies are decoded: only pixels are held
            held.bytes = 0
            try:
                rows = await batcher.logits(pixels)
            except Exception as error:
                if not batcher.alive:
                    stopped = "the batching worker has stopped: see the server's log, restart it"
                    raise ClientError(503, stopped) from None
                raise ClientError(500, f"the model failed: {one_line(error)}") from None
            _check_finite(names, rows)
            if explain:  # after the prediction, the images still counted as in the server
                explainer: Explainer = parts["explainer"]
                try:
                    heatmaps = await explainer.heatmaps(pixels)
                except Exception as error:
                    raise ClientError(500, f"the heat maps failed: {one_line(error)}") from None
        finally:
            held.give_back(admission)
        logits = torch.stack(rows)
        energies, flags = classifier.unlike_training(logits)
        values, indices = logits.softmax(1).topk(k, dim=1)
        results = []
        for i, name in enumerate(names):
            results.append({
                "file": name,
                "predictions": [{"class": classifier.classes[c], "probability": p}
                                for c, p in zip(indices[i].tolist(), values[i].tolist(),
                                                strict=True)],
                "unlike_training_data": bool(flags[i]), "energy": float(energies[i]),
                **({"heatmap": heatmaps[i]} if explain else {}),
            })  # fmt: skip
        return JSONResponse({
            "model": network.model_name, "dataset": classifier.spec.name,
            "time_ms": round((time.perf_counter() - started) * 1000, 3), "results": results,
        })  # fmt: skip

    return app


def _check_finite(names: list[str], rows: list[torch.Tensor]) -> None:
    """500 naming the first image whose logits are not all numbers."""
    for name, row in zip(names, rows, strict=True):
        if not bool(row.isfinite().all()):
            raise ClientError(
                500, f"{name}: the network's output is not a number (NaN or infinite): its "
                "weights or this device's arithmetic are broken",
            )  # fmt: skip
