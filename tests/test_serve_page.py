"""`resnets serve`'s page in a real browser (Playwright driving the system's Chromium): after a
non-image upload no broken-image icon shows, /favicon.ico answers, the preview shows the
centred square the network sees, and a server with a token gets it asked once and kept for
the tab."""

from __future__ import annotations

import dataclasses
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from test_serve import CHROMIUM, TIMEOUT, call, files, running  # noqa: F401

from resnets.predict import UNLIKE, Classifier
from resnets.serve import create_app
from resnets.weights import load_network

TOKEN = "page-token"


@pytest.fixture
def browser() -> Iterator[Any]:
    sync_api = pytest.importorskip(
        "playwright.sync_api", reason="playwright is missing: pip install 'resnets[test]'"
    )
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def test_favicon_is_a_small_icon(shapes_classifier: Classifier) -> None:
    with running(create_app(shapes_classifier)) as port:
        status, headers, _ = call(port, "GET", "/favicon.ico")
    assert status == 200 and headers["content-type"] == "image/x-icon"
    assert int(headers["content-length"]) < 2000


def test_the_page_asks_for_the_token_and_shows_what_the_network_sees(
    browser: Any, shapes_classifier: Classifier, files: list[Path], tmp_path: Path  # noqa: F811
) -> None:
    wide = tmp_path / "wide.png"
    Image.new("RGB", (120, 40), (200, 30, 30)).save(wide)
    not_png = tmp_path / "notes.png"
    not_png.write_text("not a picture")
    asked: list[str] = []
    with running(create_app(shapes_classifier, token=TOKEN)) as port:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        page.on("dialog", lambda dialog: (asked.append(dialog.message), dialog.accept(TOKEN)))
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for_function(
            "() => document.querySelector('#model').textContent.includes('3 cl')"
        )
        assert len(asked) == 1 and "token" in asked[0]
        assert page.evaluate("sessionStorage.getItem('resnets-token')") == TOKEN
        page.set_input_files("#file", str(wide))
        page.wait_for_selector("#results .row")
        assert len(asked) == 1  # kept: not asked again
        fit = page.eval_on_selector("#preview", "img => getComputedStyle(img).objectFit")
        box = page.eval_on_selector("#drop", "d => [d.clientWidth, d.clientHeight]")
        assert fit == "cover" and box[0] == box[1]  # a square showing the centred square
        page.set_input_files("#file", str(not_png))
        page.wait_for_function(
            "() => document.getElementById('error').textContent.length > 0"
        )
        assert page.inner_text("#error").startswith("415: notes.png: not an image")
        page.wait_for_function(
            "() => !document.getElementById('drop').classList.contains('has-image')"
        )
        assert not page.is_visible("#preview")  # no broken-image icon beside the error
        icon = page.evaluate("fetch('favicon.ico').then(r => r.status)")
        assert icon == 200
        assert not [e for e in errors if "Content Security Policy" in e], errors


def test_an_icon_decodes() -> None:
    """The icon is a real ICO Pillow reads back (browsers would show nothing otherwise)."""
    from resnets.serve.app import _icon  # noqa: PLC0415 (a private helper, read once here)

    with Image.open(io.BytesIO(_icon())) as image:
        assert image.format == "ICO" and image.size == (16, 16)


def test_the_page_flags_unlike_images_and_shows_where_it_looked(
    browser: Any, shapes_run: Path, files: list[Path]  # noqa: F811
) -> None:
    """With a threshold below every energy the top class is flagged; the toggle sends the image
    again with explain=true and lays the heat map over the preview, and hides it when off."""
    network = load_network(shapes_run)
    assert network.ood is not None
    strict = dataclasses.replace(network, ood=dataclasses.replace(network.ood, threshold=-1e9))
    png = next(p for p in files if p.name == "rgb.png")
    with running(create_app(Classifier(strict))) as port:
        page = browser.new_page()
        page.set_default_timeout(TIMEOUT * 1000)
        errors: list[str] = []
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.goto(f"http://127.0.0.1:{port}/")
        page.set_input_files("#file", str(png))
        page.wait_for_selector("#results .row")
        assert page.inner_text("#results .row:first-child .unlike") == UNLIKE
        assert page.locator("#results .unlike").count() == 1  # beside the top class only
        assert not page.is_visible("#heat")
        page.check("#explain")
        page.wait_for_function(
            "() => document.getElementById('drop').classList.contains('explained')"
        )
        assert page.is_visible("#heat")
        width = page.eval_on_selector("#heat", "img => img.naturalWidth")
        assert width >= 224 and width % network.spec.size == 0, width
        box = "i => { const r = i.getBoundingClientRect(); return [r.x, r.y, r.width, r.height]; }"
        assert page.eval_on_selector("#heat", box) == page.eval_on_selector("#preview", box)
        page.uncheck("#explain")
        assert not page.is_visible("#heat")
        assert not [e for e in errors if "Content Security Policy" in e], errors
