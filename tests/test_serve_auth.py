"""`resnets serve`: who may ask. A token guards /predict and /info (never /health); a
non-loopback --host needs one or --no-auth; on loopback only loopback Host names are answered
(421 otherwise, DNS rebinding); the page carries its security headers; CORS is off unless an
origin is named."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_serve import PNG, call, running

import resnets.serve
from resnets.predict import Classifier
from resnets.serve import create_app
from resnets.serve.auth import host_name, is_loopback

from helpers import run_cli

TOKEN = "s3cret-token"
RAW = {"Content-Type": "image/png"}


@pytest.fixture(scope="module")
def token_port(shapes_classifier: Classifier) -> Iterator[int]:
    with running(create_app(shapes_classifier, token=TOKEN)) as port:
        yield port


@pytest.mark.parametrize("path", ["/predict", "/info"])
def test_the_token_guards_predict_and_info(token_port: int, path: str) -> None:
    method, body = ("POST", PNG) if path == "/predict" else ("GET", None)
    for given in (None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x", TOKEN):
        headers = {**RAW, **({"Authorization": given} if given else {})}
        status, found, answer = call(token_port, method, path, body, headers)
        assert status == 401 and found["www-authenticate"] == "Bearer", given
        assert answer["status"] == 401 and "Authorization: Bearer" in answer["error"]
    headers = {**RAW, "Authorization": f"Bearer {TOKEN}"}
    assert call(token_port, method, path, body, headers)[0] == 200
    headers = {**RAW, "Authorization": f"bearer {TOKEN}"}  # the scheme in any case
    assert call(token_port, method, path, body, headers)[0] == 200


@pytest.mark.parametrize("path", ["/health", "/", "/favicon.ico"])
def test_health_the_page_and_its_icon_stay_open(token_port: int, path: str) -> None:
    assert call(token_port, "GET", path)[0] == 200


def test_a_non_loopback_host_without_a_token_is_refused_in_one_line(
    shapes_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "serve", str(shapes_run), "--host", "0.0.0.0",
                             "--device", "cpu")  # fmt: skip
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1
    assert "--host 0.0.0.0" in err and "--token" in err and "--no-auth" in err


def test_the_token_and_the_flags_reach_the_server(
    shapes_run: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command's flags and RESNETS_SERVE_TOKEN, as `serve` gets them (not started)."""
    got: list[dict[str, Any]] = []
    monkeypatch.setattr(resnets.serve, "serve", lambda *a, **k: got.append(k))
    monkeypatch.setenv("RESNETS_SERVE_TOKEN", "from-env")
    assert run_cli(capsys, "serve", str(shapes_run), "--device", "cpu")[0] == 0
    assert got[-1]["token"] == "from-env" and got[-1]["no_auth"] is False
    argv = ["serve", str(shapes_run), "--device", "cpu", "--token", "flag", "--no-auth",
            "--allowed-host", "box.lan", "--cors-origin", "https://app.example",
            "--read-timeout", "7", "--max-connections", "9"]  # fmt: skip
    assert run_cli(capsys, *argv)[0] == 0
    assert got[-1]["token"] == "flag" and got[-1]["no_auth"] is True
    assert got[-1]["allowed_hosts"] == ["box.lan"]
    assert got[-1]["cors_origins"] == ["https://app.example"]
    assert got[-1]["read_timeout"] == 7.0 and got[-1]["max_connections"] == 9


def test_loopback_names() -> None:
    assert all(map(is_loopback, ["127.0.0.1", "::1", "localhost", "127.1.2.3"]))
    assert not any(map(is_loopback, ["0.0.0.0", "::", "192.168.1.4", "example.org"]))
    assert host_name("LocalHost:8000") == "localhost" and host_name("[::1]:80") == "[::1]"
    assert host_name("127.0.0.1") == "127.0.0.1" and host_name("") == ""


@pytest.mark.parametrize(
    "host, status",
    [("127.0.0.1", 200), ("localhost:8000", 200), ("[::1]:8000", 200), ("box.lan:80", 200),
     ("attacker.example", 421), ("attacker.example:8000", 421), ("127.0.0.1.nip.io", 421),
     ("", 421)],
)  # fmt: skip
def test_only_loopback_and_allowed_host_names_are_answered(
    shapes_classifier: Classifier, host: str, status: int
) -> None:
    app = create_app(shapes_classifier, allowed_hosts=["localhost", "127.0.0.1", "[::1]",
                                                        "box.lan"])  # fmt: skip
    with running(app) as port:
        got, _, answer = call(port, "POST", "/predict", PNG, {**RAW, "Host": host})
        assert got == status, answer
        if status == 421:
            assert "--allowed-host" in answer["error"]


def test_the_page_sends_its_security_headers(token_port: int) -> None:
    _, headers, page = call(token_port, "GET", "/")
    policy = headers["content-security-policy"]
    assert "frame-ancestors 'none'" in policy and "default-src 'none'" in policy
    assert "'unsafe-inline'" not in policy and "script-src 'sha256-" in policy
    assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
    _, headers, _ = call(token_port, "GET", "/health")
    assert headers["x-content-type-options"] == "nosniff"


def test_cors_is_off_unless_an_origin_is_named(
    token_port: int, shapes_classifier: Classifier
) -> None:
    origin = {"Origin": "https://app.example"}
    _, headers, _ = call(token_port, "GET", "/health", headers=origin)
    assert "access-control-allow-origin" not in headers
    app = create_app(shapes_classifier, token=TOKEN, cors_origins=["https://app.example"])
    with running(app) as port:
        preflight = {**origin, "Access-Control-Request-Method": "POST",
                     "Access-Control-Request-Headers": "authorization,content-type"}  # fmt: skip
        status, headers, _ = call(port, "OPTIONS", "/predict", headers=preflight)
        assert status == 200 and headers["access-control-allow-origin"] == origin["Origin"]
        _, headers, _ = call(port, "GET", "/health", headers={"Origin": "https://other.example"})
        assert "access-control-allow-origin" not in headers
