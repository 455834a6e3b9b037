"""Using a trained network: resnets.Classifier, `resnets predict`, and eval's predictions.png.

One tiny run on an image folder (so the class names mean something) serves every test; the
images to predict are written by the tests in several formats, sizes and modes, with broken
files among them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from test_end_to_end import CLASSES, image_folder

import resnets
from resnets.cli import main
from resnets.data import DataSpec, DeviceBatches
from resnets.data.batches import network_input
from resnets.errors import UsageError
from resnets.models import create_model
from resnets.predict import Classifier, ImageError, Prediction
from resnets.training import factory, load_checkpoint
from resnets.training.checkpoint import model_from_checkpoint
from resnets.training.checkpoint_eval import eval_config
from resnets.training.evaluate import evaluate
from resnets.training.plots import pick_examples
from resnets.weights import TrainedNetwork, load_network, save_safetensors

from helpers import TINY
from helpers import run_cli as cli

# Small batches for the few images of the folder; a low learning rate keeps the probabilities
# away from exactly 0 and 1, so comparing them says something.
SETTINGS: dict[str, Any] = {**TINY, "batch_size": 8, "lr": 0.02}

# name -> (format, size, mode) of the good files the tests predict.
GOOD: dict[str, tuple[str, tuple[int, int], str]] = {
    "gray.png": ("PNG", (20, 30), "L"),
    "rgb.png": ("PNG", (40, 24), "RGB"),
    "rgba.png": ("PNG", (16, 16), "RGBA"),
    "palette.png": ("PNG", (33, 50), "P"),
    "gray.jpg": ("JPEG", (64, 48), "L"),
    "rgb.jpeg": ("JPEG", (17, 90), "RGB"),
    "rgb.bmp": ("BMP", (30, 30), "RGB"),
    "rgb.webp": ("WEBP", (24, 40), "RGB"),
}
BROKEN = ("truncated.png", "text.jpg", "empty.png")


def train_shapes(base: Path) -> Path:
    """A finished tiny run (BASE/run) on a folder of circles, squares and triangles."""
    root = image_folder(base / "shapes")
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in SETTINGS.items()]
    code = main(["train", *argv, "--dataset", "folder", "--data-dir", str(root),
                 "--out", str(base / "run"), "--quiet"])  # fmt: skip
    assert code == 0
    return base / "run"


def picture(size: tuple[int, int], mode: str, seed: int) -> Image.Image:
    """A noisy image with a bright square in a corner, in `mode`."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 200, (size[1], size[0], 3), dtype=np.uint8)
    pixels[: size[1] // 3, : size[0] // 3] = 255
    image = Image.fromarray(pixels, "RGB")
    if mode == "RGBA":
        image.putalpha(Image.fromarray(rng.integers(0, 256, size[::-1], dtype=np.uint8)))
        return image
    return image.convert(mode)


def write_good(folder: Path) -> list[Path]:
    """The GOOD files, written into `folder`, in GOOD's order."""
    for seed, (name, (fmt, size, mode)) in enumerate(GOOD.items()):
        picture(size, mode, seed).save(folder / name, fmt)
    return [folder / name for name in GOOD]


@pytest.fixture
def images(tmp_path: Path) -> Path:
    """tmp_path/images/: the GOOD files, the BROKEN ones, a hidden image and a sub-folder."""
    folder = tmp_path / "images"
    folder.mkdir()
    write_good(folder)
    whole = folder / "rgb.png"
    (folder / "truncated.png").write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    (folder / "text.jpg").write_text("not a picture\n")
    (folder / "empty.png").write_bytes(b"")
    picture((20, 20), "RGB", 99).save(folder / ".hidden.png")
    (folder / "nested").mkdir()
    picture((20, 20), "RGB", 98).save(folder / "nested" / "deep.png")
    (folder / "notes.txt").write_text("not an image name, so not read\n")
    return folder



def check_top(top: list[tuple[str, float]], k: int) -> None:
    probabilities = [p for _, p in top]
    assert len(top) == k and len({name for name, _ in top}) == k
    assert {name for name, _ in top} <= set(CLASSES)
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(0 <= p <= 1 for p in probabilities) and sum(probabilities) <= 1 + 1e-6


# -- the command ----------------------------------------------------------------------------


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_predicts_the_good_files_and_names_each_broken_one_once(
    shapes_run: Path, images: Path, capsys: pytest.CaptureFixture[str], as_json: bool
) -> None:
    extra = ["--json"] if as_json else []
    code, out, err = cli(capsys, "predict", str(shapes_run), str(images), "--top-k", "2", *extra)
    assert code == 2
    lines = err.splitlines()
    assert len(lines) == len(BROKEN) and "Traceback" not in err
    for name in BROKEN:
        assert sum(str(images / name) in line for line in lines) == 1
    assert all(line.startswith("resnets: error: ") for line in lines)
    expected = sorted(str(images / name) for name in GOOD)
    if as_json:
        results = json.loads(out)
        assert [r["file"] for r in results] == expected
        for result in results:
            check_top([(p["class"], p["probability"]) for p in result["predictions"]], 2)
    else:
        blocks = [block.splitlines() for block in out.strip().split("\n\n")]
        assert [block[0] for block in blocks] == expected
        for block in blocks:
            top = [(line.split()[0], float(line.split()[1])) for line in block[1:]]
            check_top(top, 2)


def test_cli_text_and_json_say_the_same(
    shapes_run: Path, images: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    files = [str(images / name) for name in GOOD]
    code, text, _ = cli(capsys, "predict", str(shapes_run), *files)
    assert code == 0
    code, out, _ = cli(capsys, "predict", str(shapes_run), *files, "--json", "--top-k", "9")
    assert code == 0
    results = json.loads(out)
    assert [r["file"] for r in results] == files  # in the order given
    for block, result in zip(text.strip().split("\n\n"), results, strict=True):
        rows = [line.split() for line in block.splitlines()[1:]]
        assert len(rows) == len(CLASSES)  # top 5 of 3 classes, and top 9, are all 3
        assert rows == [[p["class"], f"{p['probability']:.4f}"] for p in result["predictions"]]


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["{empty}"], "a folder without image files"),
        (["{missing}"], "no such file"),
    ],
    ids=["folder-without-images", "missing-file"],
)
def test_cli_nothing_readable_is_one_line_and_exit_2(
    shapes_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], says: str
) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    paths = [a.format(empty=tmp_path / "empty", missing=tmp_path / "no.png") for a in argv]
    code, out, err = cli(capsys, "predict", str(shapes_run), *paths)
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and says in err and paths[0] in err


@pytest.mark.parametrize("checkpoint", ["missing-run", "foreign.safetensors", "foreign.pt"])
def test_cli_a_bad_checkpoint_is_one_line_and_exit_2(
    images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], checkpoint: str
) -> None:
    (tmp_path / "foreign.safetensors").write_bytes(b"\x00" * 16)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "foreign.pt")
    code, out, err = cli(capsys, "predict", str(tmp_path / checkpoint), str(images / "rgb.png"))
    assert code == 2 and out == ""
    assert len(err.splitlines()) == 1 and checkpoint in err and "Traceback" not in err


# -- the library ----------------------------------------------------------------------------


def test_three_lines_of_user_code(shapes_run: Path, images: Path) -> None:
    clf = resnets.Classifier.from_checkpoint(shapes_run)
    result = clf.predict([images / "rgb.png"])[0]
    assert isinstance(result, resnets.Prediction)
    assert str(result).startswith(f"{images / 'rgb.png'}: {result.label} ")
    assert result.label in CLASSES and result.probability == result.top[0][1]
    assert clf.predict(str(images / "rgb.png")) == [result]  # one path, not a list of letters


def test_probabilities_are_the_softmax_of_the_model(
    shapes_classifier: Classifier, images: Path
) -> None:
    files = [images / name for name in GOOD]
    everything = shapes_classifier.predict(files, top_k=len(CLASSES), batch_size=3)
    pixels = torch.stack([shapes_classifier.decode(f) for f in files])
    model = load_network(shapes_classifier.network.source).build()
    with torch.no_grad():
        expected = model(
            network_input(pixels, shapes_classifier.spec, shapes_classifier.image_size)
        ).softmax(1)
    for result, row in zip(everything, expected, strict=True):
        check_top(list(result.top), len(CLASSES))
        got = torch.tensor([p for _, p in sorted(result.top, key=lambda t: CLASSES.index(t[0]))])
        torch.testing.assert_close(got, row, rtol=0, atol=1e-6)
        assert abs(sum(p for _, p in result.top) - 1) < 1e-5
    assert expected.min() > 1e-4  # the probabilities are not all 0 or 1
    top2 = shapes_classifier.predict(files, top_k=2)
    assert [r.top for r in top2] == [r.top[:2] for r in everything]


# A JPEG file at least twice the data's size is decoded at reduced scale (as training did);
# a Pillow image is taken as it is, so gray.jpg (64x48 for 16 px) is predicted a little apart.
@pytest.mark.parametrize("name", [name for name in GOOD if name != "gray.jpg"])
def test_a_pillow_image_is_predicted_as_its_file(
    shapes_classifier: Classifier, images: Path, name: str
) -> None:
    from_file = shapes_classifier.predict([images / name])[0]
    with Image.open(images / name) as opened:
        from_image = shapes_classifier.predict([opened])[0]
        in_memory = shapes_classifier.predict([opened.copy()])[0]  # no filename
    assert from_image == from_file
    assert in_memory.source == "<image 0>" and in_memory.top == from_file.top


# -- NumPy arrays: before, `predict([array])` raised AttributeError: ... has no attribute 'read'


def as_arrays(image: Image.Image) -> dict[str, np.ndarray]:
    """`image` as each array form predict accepts (grey forms only for a grey image)."""
    if image.mode == "L":
        grey = np.asarray(image)
        return {"HW uint8": grey, "HW1 uint8": grey[:, :, None],
                "1HW float32": grey[None].astype(np.float32) / 255}  # fmt: skip
    rgb = np.asarray(image.convert("RGB"))
    return {"HWC uint8": rgb, "CHW float32": rgb.transpose(2, 0, 1).astype(np.float32) / 255,
            "CHW float64": rgb.transpose(2, 0, 1) / 255.0}  # fmt: skip


@pytest.mark.parametrize("name", ["gray.png", "rgb.png", "rgb.bmp"])
def test_a_numpy_array_is_predicted_as_its_pillow_image(
    shapes_classifier: Classifier, images: Path, name: str
) -> None:
    with Image.open(images / name) as opened:
        image = opened.copy()
    expected = shapes_classifier.predict([image])[0].top
    for form, array in as_arrays(image).items():
        got = shapes_classifier.predict([array])
        assert got[0].source == "<image 0>" and got[0].top == expected, form
        assert shapes_classifier.predict(array) == got, form  # one array: one image, not rows


@pytest.mark.parametrize(
    ("image", "says"),
    [
        (np.zeros((3, 8, 8), np.uint8), "uint8 (3, 8, 8) is not one of"),  # uint8 must be HWC
        (np.zeros((8, 8, 4), np.uint8), "uint8 (8, 8, 4) is not one of"),
        (np.zeros((8, 8), np.int64), "int64 (8, 8) is not one of"),
        (np.zeros((8, 8, 3), np.float32), "float32 (8, 8, 3) is not one of"),
        (np.full((3, 8, 8), 255.0), "values in [0, 1]"),  # float pixels on the 0-255 scale
        (np.full((1, 8, 8), np.nan), "values in [0, 1]"),
        (b"\x89PNG", "a file path, a Pillow image or a NumPy array"),
        (7, "not int"),
    ],
    ids=["uint8-chw", "rgba-array", "int64", "float-hwc", "float-255", "nan", "bytes", "int"],
)
def test_anything_else_is_refused_in_one_line_saying_what_is_accepted(
    shapes_classifier: Classifier, image: Any, says: str
) -> None:
    with pytest.raises(UsageError) as caught:
        shapes_classifier.predict([image])
    message = str(caught.value)
    assert says in message and "\n" not in message and "[0, 1]" in message
    with pytest.raises(UsageError):  # a wrong argument is not an unreadable file: not skipped
        shapes_classifier.predict([image], on_error=lambda error: None)


@pytest.mark.parametrize("source", ["run", "pt", "safetensors"])
def test_run_folder_checkpoint_and_safetensors_predict_the_same(
    shapes_run: Path, images: Path, tmp_path: Path, shapes_classifier: Classifier, source: str
) -> None:
    path = {
        "run": shapes_run,
        "pt": shapes_run / "checkpoints" / "best.pt",
        "safetensors": tmp_path / "net.safetensors",
    }[source]
    if source == "safetensors":
        save_safetensors(load_network(shapes_run), path)
    files = [images / name for name in GOOD]
    assert Classifier.from_checkpoint(path).predict(files, top_k=3) == shapes_classifier.predict(
        files, top_k=3
    )


@pytest.mark.parametrize("name", BROKEN + ("missing.png",))
def test_a_broken_file_raises_one_line_naming_it(
    shapes_classifier: Classifier, images: Path, name: str
) -> None:
    with pytest.raises(ImageError) as caught:
        shapes_classifier.predict([images / "rgb.png", images / name])
    message = str(caught.value)
    assert message.startswith(f"{images / name}: ") and "\n" not in message
    errors: list[ImageError] = []
    kept = shapes_classifier.predict([images / name, images / "rgb.png"], on_error=errors.append)
    assert [r.source for r in kept] == [str(images / "rgb.png")]
    assert [str(e) for e in errors] == [message]


def test_predicting_a_split_gives_the_logits_of_evaluation(shapes_run: Path) -> None:
    """The test split's uint8 images, as Pillow images through the Classifier, against the
    same images through DeviceBatches and the network as `resnets eval` builds it."""
    file, state, config = eval_config(shapes_run)
    data = factory.load_data(config, quiet=True)
    clf = Classifier.from_checkpoint(file)
    assert data.spec == clf.spec
    pixels = data.test.pixels()
    pictures = [Image.fromarray(p.permute(1, 2, 0).numpy(), "RGB") for p in pixels]
    decoded = torch.stack([clf.decode(p) for p in pictures])
    assert torch.equal(decoded, pixels)  # a picture at the data's size is kept as it is
    batches = DeviceBatches(
        data.test, spec=data.spec, batch_size=len(pixels), image_size=config.image_size
    )
    [(x, labels)] = list(batches.epoch(0))
    assert torch.equal(x, network_input(pixels, clf.spec, clf.image_size))  # bit for bit
    logits = clf.logits(decoded)
    with torch.no_grad():
        assert torch.equal(clf.model(x), logits)
        trained, _ = model_from_checkpoint(state, file)  # with the CPU tiny-map convolutions
        evaluated = trained.eval()(x)
    torch.testing.assert_close(logits, evaluated, rtol=0, atol=1e-5)
    predictions = clf.predict(pictures, top_k=1)
    assert [r.label for r in predictions] == [clf.classes[i] for i in evaluated.argmax(1)]
    best = evaluated.softmax(1).amax(1)
    torch.testing.assert_close(torch.tensor([r.probability for r in predictions]), best,
                               rtol=0, atol=1e-6)  # fmt: skip


# -- evaluation's picture ---------------------------------------------------------------------


def test_eval_draws_predictions_png(shapes_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (shapes_run / "predictions.png").unlink(missing_ok=True)
    code, out, err = cli(capsys, "eval", str(shapes_run))
    assert code == 0, err
    picture = shapes_run / "predictions.png"
    calibration = shapes_run / "calibration.png"
    assert f"wrote {shapes_run / 'confusion.png'}, {calibration} and {picture}" in out
    assert calibration.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert picture.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(picture) as image:
        assert image.width > 400 and image.height > 100
    assert not list(shapes_run.glob(".*.tmp"))


def test_keeping_predictions_leaves_the_evaluation_numbers_alone(shapes_run: Path) -> None:
    file, state, config = eval_config(shapes_run)
    data = factory.load_data(config, quiet=True)
    model, _ = model_from_checkpoint(state, file)
    batches = DeviceBatches(data.test, spec=data.spec, batch_size=4, image_size=config.image_size)
    options: dict[str, Any] = {"device": torch.device("cpu"), "num_classes": len(CLASSES)}
    plain = evaluate(model, batches.epoch(0), **options)
    kept = evaluate(model, batches.epoch(0), keep_predictions=True, **options)
    assert {k: kept[k] for k in plain} == plain
    assert len(kept["predicted"]) == len(kept["confidence"]) == plain["images"]
    x = torch.cat([x for x, _ in batches.epoch(0)])
    with torch.no_grad():
        probabilities = model.eval()(x).softmax(1)
    assert torch.equal(kept["predicted"], probabilities.argmax(1))
    torch.testing.assert_close(kept["confidence"], probabilities.amax(1))
    assert state["model_name"] == load_checkpoint(file)["model_name"]


def test_the_picture_shows_the_most_confident_mistakes_first() -> None:
    true = [0, 1, 2, 0, 1, 2]
    predicted = [0, 2, 2, 1, 0, 2]
    confidence = [0.9, 0.6, 0.8, 0.95, 0.6, 0.7]
    assert pick_examples(true, predicted, confidence) == [3, 1, 4, 0, 2, 5]
    assert pick_examples(true, predicted, confidence, count=2) == [3, 1]


def test_a_prediction_as_json(shapes_classifier: Classifier, images: Path) -> None:
    result = shapes_classifier.predict([images / "gray.png"], top_k=2)[0]
    assert result.to_dict() == {
        "file": str(images / "gray.png"),
        "predictions": [{"class": c, "probability": p} for c, p in result.top],
        "unlike_training_data": result.unlike_training,
        "energy": result.energy,
    }
    assert isinstance(result.energy, float) and isinstance(result.unlike_training, bool)
    assert Prediction("x", (("a", 0.5),)).label == "a"


@pytest.mark.parametrize("image_size", [9, 20], ids=["shrunk", "enlarged"])
def test_a_network_fed_at_another_size_sees_the_batches_of_evaluation(image_size: int) -> None:
    """Data stored at 12 px, a network trained at `image_size`: the bilinear resize too is the
    evaluation batches' own, bit for bit."""
    spec = DataSpec("grey-set", ("a", "b"), channels=1, size=12, mean=(0.4,), std=(0.3,))
    torch.manual_seed(0)
    kwargs = {"in_channels": 1, "num_classes": 2, "width": 0.25}
    weights = create_model("cifar_resnet20", **kwargs).state_dict()
    network = TrainedNetwork("cifar_resnet20", kwargs, spec, image_size, weights, Path("x"))
    clf = Classifier(network)
    pixels = torch.randint(0, 256, (5, 1, 12, 12), dtype=torch.uint8)
    batches = DeviceBatches(pixels, torch.zeros(5), spec=spec, batch_size=5, image_size=image_size)
    [(x, _)] = list(batches.epoch(0))
    assert x.shape[-1] == image_size
    with torch.no_grad():
        assert torch.equal(clf.logits(pixels), clf.model(x))
    pictures = [Image.fromarray(p[0].numpy(), "L") for p in pixels]
    expected = clf.model(x).softmax(1).amax(1).tolist()
    assert [r.probability for r in clf.predict(pictures, top_k=1)] == expected
