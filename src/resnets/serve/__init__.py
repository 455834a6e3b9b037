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

The parts: limits.py (what a server accepts), uploads.py (reading bodies), decoding.py
(bytes to pixels), worker.py (admission and batching), app.py (routes), server.py (uvicorn).
"""

from resnets.errors import UsageError

try:  # checked here first, so the one-line message comes whatever part is imported
    import fastapi  # noqa: F401
    import python_multipart  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as missing:
    raise UsageError(
        f"resnets serve needs the serve extra ({missing.name} is not installed): "
        "pip install 'resnets[serve]'"
    ) from None

from resnets.serve.app import create_app  # noqa: E402
from resnets.serve.decoding import FORMATS, decode_upload  # noqa: E402
from resnets.serve.limits import ClientError, Limits  # noqa: E402
from resnets.serve.server import listen, serve  # noqa: E402

__all__ = ["FORMATS", "ClientError", "Limits", "create_app", "decode_upload", "listen", "serve"]
