"""A trained network behind HTTP: `resnets serve RUN`, or `create_app(classifier)` for any
ASGI server. Needs the serve extra (FastAPI, uvicorn, python-multipart).

    POST /predict   images in, the top-k classes of each out (JSON)
    GET  /health    answers while a batch runs: {"status": "ok", ...}
    GET  /info      model, classes, input spec, parameter count, version, limits
    GET  /          a page to try it in the browser (static/index.html, shipped in the package)
    GET  /openapi.json   the schema, from FastAPI
    GET  /favicon.ico    a tiny icon

How a request goes. Its headers must arrive within `read_timeout`, on one of at most
`max_connections` connections. Its body is read in memory within `max_bytes` (413), and
within `read_timeout` again (408); while it arrives, its bytes count against the bytes in
flight of all requests (`max_bytes_in_flight`) and each complete image against `queue_limit`
(503 with Retry-After past either), so a stalled client holds only what it sent. It is raw
bytes with an image Content-Type, or multipart/form-data with one `file` field per image (at
most `max_images`). Each image's header is checked (`max_pixels`), and all of the request's
images against `max_decoded_bytes`, before anything is decoded; then the pixels are decoded
from those bytes alone (no file is opened or written for a client), exactly as
`Classifier.predict` decodes a file, one image of a request at a time on two threads (small
images, large ones), so requests take turns. One worker gathers decoded images into batches of
up to `max_batch`, waiting at most `max_wait_ms` once the first arrived, and runs each on an
inference thread, so the event loop keeps answering. Optionally a bearer token guards
/predict and /info, and on a loopback bind only loopback Host names are answered (auth.py).

Every refusal is JSON `{"error": "...", "status": N}` with the right status, a failed batch
answers 500 to its own requests only, and the server keeps serving. Logs are one line each,
the same one at most once a second.

The parts: limits.py (what a server accepts), admission.py (bytes and images held),
uploads.py (reading bodies), decoding.py (bytes to pixels), worker.py (batching), auth.py
(Host, token, security headers), schema.py (the OpenAPI of the answers), app.py (routes),
server.py (uvicorn: connections, open files, logs, signals).
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
from resnets.serve.server import listen, make_server, serve  # noqa: E402

__all__ = [
    "FORMATS", "ClientError", "Limits", "create_app", "decode_upload", "listen", "make_server",
    "serve",
]  # fmt: skip
