"""The OpenAPI description of what the routes really answer, merged into FastAPI's schema:
every status /predict can give, the JSON error shape, and exactly the media types accepted."""

from __future__ import annotations

from typing import Any

from resnets.serve.explaining import EXPLAIN_LIMIT
from resnets.serve.uploads import RAW_TYPES

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error", "status"],
    "properties": {"error": {"type": "string"}, "status": {"type": "integer"}},
}
PREDICTIONS: dict[str, Any] = {
    "type": "object",
    "required": ["model", "dataset", "time_ms", "results"],
    "properties": {
        "model": {"type": "string"}, "dataset": {"type": "string"},
        "time_ms": {"type": "number"},
        "results": {"type": "array", "items": {
            "type": "object",
            "required": ["file", "predictions", "unlike_training_data", "energy"],
            "properties": {
                "file": {"type": "string"},
                "unlike_training_data": {
                    "type": "boolean",
                    "description": "the image's energy score is above the threshold measured "
                    "on held-out images at the end of training (resnets.ood): unlike the "
                    "training data. Always false for a network saved without a threshold",
                },
                "energy": {"type": "number", "description": "the image's energy score, "
                           "-logsumexp(logits): lower is more like the training data"},
                "heatmap": {
                    "type": "string", "contentEncoding": "base64",
                    "contentMediaType": "image/png",
                    "description": "with explain=true only: a PNG, base64, of the image (the "
                    "centred square the network sees, enlarged) with a Grad-CAM heat map of "
                    "the evidence for its top class laid over it",
                },
                "predictions": {"type": "array", "items": {
                    "type": "object", "required": ["class", "probability"],
                    "properties": {"class": {"type": "string"},
                                   "probability": {"type": "number", "minimum": 0, "maximum": 1}},
                }},
            },
        }},
    },
}  # fmt: skip


def _refusal(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": ERROR}}}


_BUSY = {**_refusal("busy (bytes or images in the server at their limit), or stopping: try again "
                    "after Retry-After seconds"),
         "headers": {"Retry-After": {"schema": {"type": "string"}}}}  # fmt: skip
_NO_TOKEN = _refusal("the server has a token and the request has not sent it")

PREDICT_EXTRA: dict[str, Any] = {
    "parameters": [{
        "name": "top_k", "in": "query", "required": False,
        "description": "classes per image (the server's --top-k unless given)",
        "schema": {"type": "integer", "minimum": 1, "maximum": 999_999_999},
    }, {
        "name": "explain", "in": "query", "required": False,
        "description": "true: add a Grad-CAM heat map per image (`heatmap`), for at most "
        f"{EXPLAIN_LIMIT} images per request (400 beyond)",
        "schema": {"type": "boolean", "default": False},
    }],
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {"schema": {
                "type": "object",
                "properties": {"file": {"type": "array", "minItems": 1,
                                        "items": {"type": "string", "format": "binary"}}},
                "required": ["file"],
                "additionalProperties": False,
            }},
            **{kind: {"schema": {"type": "string", "format": "binary"}} for kind in RAW_TYPES},
        },
    },
    "responses": {
        "200": {"description": "the top classes of each image, in the order sent",
                "content": {"application/json": {"schema": PREDICTIONS}}},
        "400": _refusal("a malformed request: an empty, truncated or damaged image, a malformed "
                        "multipart body, a field other than `file`, a bad top_k or explain, "
                        f"explain=true with more than {EXPLAIN_LIMIT} images"),
        "401": _NO_TOKEN,
        "408": _refusal("the body did not arrive within the server's read timeout"),
        "413": _refusal("too large: the body, the number of images, an image's pixels, or the "
                        "decoded size of the request's images"),
        "415": _refusal("not an image this server reads (PNG, JPEG, BMP, WebP), or another "
                        "Content-Type"),
        "500": _refusal("the network failed on this request's batch, or on its heat maps"),
        "503": _BUSY,
    },
}  # fmt: skip
HEALTH_RESPONSES: dict[int | str, dict[str, Any]] = {
    503: {"description": "the batching worker has stopped: /predict cannot answer"},
}
INFO_RESPONSES: dict[int | str, dict[str, Any]] = {401: _NO_TOKEN}
