"""Shared fixtures: the tests' own helpers on the path, and data sets kept off the machine's."""

import pathlib
import sys
import urllib.request

import pytest

sys.path.insert(0, str(pathlib.Path(__file__).parent))

from resnets.data import FASHION_MNIST, MNIST  # noqa: E402


@pytest.fixture
def offline_data(tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No real data, no network: system folders and the cache point into tmp_path."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("tests must not touch the network")

    monkeypatch.setattr(FASHION_MNIST, "system_dir", tmp_path / "no-system-fashion")
    monkeypatch.setattr(MNIST, "system_dir", tmp_path / "no-system-mnist")
    monkeypatch.setenv("RESNETS_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr(urllib.request, "urlopen", no_network)
