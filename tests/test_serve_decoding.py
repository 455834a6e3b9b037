"""`resnets serve`: bounded decoding. A request's images together have a decoded-size budget
(checked on their headers, before any pixel is decoded), 16-bit images are converted with
integers exactly as the float rounding did, and small images are decoded beside a large
request instead of behind it."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_serve import PNG, TIMEOUT, call, healthy, multipart, running

from resnets.data.folder import _convert
from resnets.predict import Classifier
from resnets.serve import create_app
from resnets.serve.decoding import LIGHT_BYTES, open_upload, pixel_bytes

from helpers import SRC


def sixteen_bit_png(side: int, level: int = 40_000) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((side, side), level, np.uint16)).save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()


def test_16_bit_levels_are_scaled_in_integers_as_rounding_did() -> None:
    every = np.arange(65536, dtype=np.uint16).reshape(256, 256)
    rounded = np.clip(np.rint(every / 257), 0, 255).astype(np.uint8)
    assert (np.asarray(_convert(Image.fromarray(every), 1)) == rounded).all()
    wide = np.array([[-5, 0, 128, 129, 65535, 70_000]], dtype=np.int32)  # mode "I"
    assert np.asarray(_convert(Image.fromarray(wide), 1)).tolist() == [[0, 0, 0, 1, 255, 255]]


def test_decoded_size_comes_from_the_header() -> None:
    image = open_upload(sixteen_bit_png(300), "a.png", 10**6, 32)
    assert image.mode == "I;16" and pixel_bytes(image) == 300 * 300 * 2
    assert pixel_bytes(open_upload(PNG, "b.png", 10**6, 32)) == 40 * 30 * 4  # RGB: 4 bytes


def test_sixteen_huge_16_bit_pngs_are_refused_by_the_request_budget(
    shapes_classifier: Classifier,
) -> None:
    huge = sixteen_bit_png(6000)  # 72 MB decoded each, about 70 KB sent
    with running(create_app(shapes_classifier)) as port:
        body, headers = multipart([(f"{i}.png", huge) for i in range(16)])
        status, _, answer = call(port, "POST", "/predict", body, headers)
        assert status == 413 and "per request" in answer["error"], answer
        assert healthy(port)["images"] == 0 and healthy(port)["in_server"] == 0
        assert call(port, "POST", "/predict", PNG, {"Content-Type": "image/png"})[0] == 200


def test_a_small_request_is_decoded_beside_a_large_one(shapes_classifier: Classifier) -> None:
    large = sixteen_bit_png(2048)  # 8 MiB decoded: the large images' thread
    assert LIGHT_BYTES < 2048 * 2048 * 2
    with running(create_app(shapes_classifier)) as port, ThreadPoolExecutor(1) as pool:
        body, headers = multipart([(f"{i}.png", large) for i in range(24)])
        heavy = pool.submit(call, port, "POST", "/predict", body, headers)
        while healthy(port)["decoding"] == 0:  # the large request is being decoded...
            assert not heavy.done(), heavy.result()
        status, _, answer = call(port, "POST", "/predict", PNG, {"Content-Type": "image/png"})
        assert status == 200, answer
        assert not heavy.done()  # ...and the small one was answered before it ended
        status, _, answer = heavy.result(TIMEOUT)
        assert status == 200 and len(answer["results"]) == 24


@pytest.mark.slow
def test_resident_memory_stays_within_the_stated_bound(shapes_run: Path) -> None:
    """The README's bound: the model, plus the bodies in flight (twice, while copied), plus
    one large image being decoded (about 10 bytes a pixel at worst) and one small one."""
    max_pixels, in_flight = 5_000_000, 4 * 2**20
    flags = ["--max-pixels", str(max_pixels), "--max-bytes-in-flight", str(in_flight),
             "--max-bytes", str(in_flight), "--max-decoded-bytes", str(64 * 2**20)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "resnets", "serve", str(shapes_run), "--port", "0",
               "--device", "cpu", *flags]  # fmt: skip
    large = sixteen_bit_png(2048)  # 8 MiB decoded, 4.2 million pixels
    with subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            found = re.search(r"http://127\.0\.0\.1:(\d+)/", process.stdout.readline())
            assert found
            port = int(found.group(1))
            assert call(port, "POST", "/predict", PNG, {"Content-Type": "image/png"})[0] == 200
            status = Path(f"/proc/{process.pid}/status")
            if not status.exists():
                pytest.skip("no /proc here to read resident memory from")
            Path(f"/proc/{process.pid}/clear_refs").write_text("5")  # the peak starts again
            before = _kib(status, "VmRSS")
            body, headers = multipart([(f"{i}.png", large) for i in range(6)])
            with ThreadPoolExecutor(4) as pool:
                answers = list(pool.map(lambda _: call(port, "POST", "/predict", body, headers),
                                        range(4)))  # fmt: skip
            assert all(a[0] == 200 for a in answers), [a[2] for a in answers]
            peak = _kib(status, "VmHWM")
        finally:
            process.terminate()
            process.wait(TIMEOUT)
    bound = 2 * in_flight + 10 * max_pixels + 10 * LIGHT_BYTES + 64 * 2**20  # 64 MiB: slack
    assert (peak - before) * 1024 < bound, (peak - before) // 1024


def _kib(status: Path, key: str) -> int:
    line = next(x for x in status.read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1])
