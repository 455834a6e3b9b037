"""`resnets serve`: the schema tells the truth. /predict documents every status it answers with
the JSON error shape, and accepts exactly the media types it lists; Schemathesis (an API
fuzzer) run against the live server on loopback with `--checks all` finds nothing."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from test_serve import TIMEOUT, call, running

from resnets.predict import Classifier
from resnets.serve import create_app
from resnets.serve.uploads import MEDIA_TYPES

from helpers import timeout

CONFIG = Path(__file__).parent / "fixtures" / "schemathesis.toml"
SCHEMATHESIS = shutil.which("schemathesis") or str(Path(sys.executable).with_name("schemathesis"))


def test_predict_documents_its_statuses_and_media_types(shapes_classifier: Classifier) -> None:
    with running(create_app(shapes_classifier)) as port:
        _, _, schema = call(port, "GET", "/openapi.json")
    predict = schema["paths"]["/predict"]["post"]
    assert set(predict["requestBody"]["content"]) == set(MEDIA_TYPES)
    documented = set(predict["responses"])
    assert {"200", "400", "401", "408", "413", "415", "503"} <= documented
    assert "422" not in documented  # FastAPI's default; validation errors are 400 here
    for status in documented - {"200"}:
        shape = predict["responses"][status]["content"]["application/json"]["schema"]
        assert shape["required"] == ["error", "status"]
    assert "422" not in str(schema["paths"])


@pytest.mark.slow
def test_schemathesis_finds_nothing(shapes_classifier: Classifier, tmp_path: Path) -> None:
    if not Path(SCHEMATHESIS).exists():
        pytest.skip("schemathesis is missing: pip install 'resnets[test]'")
    with running(create_app(shapes_classifier)) as port:
        command = [
            SCHEMATHESIS, "--config-file", str(CONFIG), "run",
            f"http://127.0.0.1:{port}/openapi.json", "--checks", "all",
            "--max-examples", "8", "--seed", "1", "--generation-deterministic", "--workers",
            "1", "--request-timeout", str(TIMEOUT), "--suppress-health-check", "all",
            "--phases", "examples,coverage,fuzzing", "--no-color",
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout(300),
                              cwd=tmp_path)  # fmt: skip
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
