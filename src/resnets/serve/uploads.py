"""Request bodies: one raw image body or multipart/form-data `file` fields, read in memory
while they stream: within `max_bytes` per request (413), within the bytes in flight of all
requests together (503), and within the read timeout (408)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass

from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from resnets.serve.admission import Admission, Reading
from resnets.serve.limits import NAME_LIMIT, ClientError, Limits

BOUNDARY_LIMIT = 70  # characters of a multipart boundary (RFC 2046, section 5.1.1)
# The Content-Types of a raw image body: the formats decoding.FORMATS reads.
RAW_TYPES = ("image/png", "image/jpeg", "image/bmp", "image/webp")
MEDIA_TYPES = ("multipart/form-data", *RAW_TYPES)


@dataclass
class Held:
    """What one request holds of the admission's counts, given back when it ends."""

    bytes: int = 0
    images: int = 0

    def give_back(self, admission: Admission) -> None:
        admission.give_bytes(self.bytes)
        admission.give_images(self.images)
        self.bytes = self.images = 0


class _Multipart:
    """Collects the `file` fields of a multipart/form-data body fed to it chunk by chunk, in
    memory, refusing any other field and more than `max_images` files as they begin."""

    def __init__(self, boundary: bytes, max_images: int, on_image: Callable[[], None]) -> None:
        self.max_images = max_images
        self.on_image = on_image
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
        if len(boundary) > BOUNDARY_LIMIT:
            raise ClientError(
                400, f"a multipart boundary of {len(boundary)} characters: at most "
                f"{BOUNDARY_LIMIT} (RFC 2046)",
            )  # fmt: skip
        try:
            self.parser = MultipartParser(boundary, callbacks)  # type: ignore[arg-type]
        except (MultipartParseError, ValueError) as error:
            raise ClientError(400, f"a malformed multipart boundary ({error})") from None

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
        self.on_image()

    def _end(self) -> None:
        self.ended = True


async def read_uploads(
    request: Request, limits: Limits, admission: Admission, held: Held
) -> list[tuple[str, bytes]]:
    """The (name, bytes) of each image in the request's body, from multipart `file` fields or
    one raw image body. What it takes of the admission is added to `held` as it arrives."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise ClientError(400, f"Content-Length {declared[:40]!r} is not a number")
        if int(declared) > limits.max_bytes:
            raise ClientError(
                413, f"the body is {int(declared):,} bytes, over this server's limit of "
                f"{limits.max_bytes:,}", {"Connection": "close"},
            )  # fmt: skip

    def one_image() -> None:
        admission.take_images(1)
        held.images += 1

    kind, options = parse_options_header(request.headers.get("content-type"))
    multipart: _Multipart | None = None
    if kind == b"multipart/form-data":
        if not options.get(b"boundary"):
            raise ClientError(400, "a multipart/form-data Content-Type without a boundary")
        multipart = _Multipart(options[b"boundary"], limits.max_images, one_image)
    elif kind.decode("latin-1") not in RAW_TYPES:
        shown = kind.decode("latin-1")[:60] or "none"
        raise ClientError(
            415, f"Content-Type {shown}: this server reads PNG, JPEG, BMP, WEBP; send "
            "multipart/form-data with one `file` field per image, or one image as the body "
            f"with Content-Type {', '.join(RAW_TYPES)}",
        )  # fmt: skip
    body = bytearray()
    reading: Reading | None = None
    try:
        async with asyncio.timeout(limits.read_timeout) as deadline:
            with admission.reading(deadline) as reading:
                async for chunk in request.stream():
                    if held.bytes + len(chunk) > limits.max_bytes:
                        raise ClientError(
                            413, f"the body is over this server's limit of {limits.max_bytes:,} "
                            "bytes", {"Connection": "close"},
                        )  # fmt: skip
                    admission.take_bytes(len(chunk))
                    held.bytes += len(chunk)
                    if multipart is not None:
                        multipart.write(chunk)
                    else:
                        body += chunk
    except TimeoutError:
        assert reading is not None
        raise reading.refusal() from None
    except ClientDisconnect:
        raise ClientError(400, "the client went away before sending the whole body") from None
    if multipart is not None:
        return multipart.finish()
    if not body:
        raise ClientError(400, "an empty body: send an image")
    one_image()
    return [("<image 0>", bytes(body))]
