"""Recipes on any data set: a minimum of optimizer steps, mirroring as a fact of the data
(dataset.toml, --no-mirror), the line that says whether mirroring is on, and the warning when
flip TTA lowers the held-out accuracy."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from resnets.data import Dataset, DataSpec
from resnets.data.batches import MIRRORS
from resnets.data.datasets import (
    DATASETS,
    DataOptions,
    count_train_images,
    declared_mirror,
    load_dataset,
)
from resnets.data.facts import read_facts
from resnets.errors import DataError, UsageError
from resnets.training import TrainConfig, make_config
from resnets.training import config as config_module
from resnets.training.config import (
    RECIPE_BASIS,
    RECIPE_BASIS_FP32,
    RECIPES,
    RECIPES_FP32,
    computes_fp32_on_cpu,
    recipe_note,
    recipe_settings,
    steps_per_epoch,
    stretch_to_min_steps,
)
from resnets.training.factory import build_trainer, decide_mirroring, resume_config
from resnets.training.loop import Trainer
from resnets.training.schedule import learning_rate

from helpers import TINY, run_cli, synthetic_dataset

# The training tests give the micro-batch, so that no memory plan is probed (seconds each).
PLANNED = {"micro_batch": 50}

# --- dataset.toml ----------------------------------------------------------------------------


def write_toml(root: Path, text: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "dataset.toml").write_text(text)
    return root


def test_no_dataset_toml_is_no_facts(tmp_path: Path) -> None:
    assert read_facts(tmp_path) is None


def test_every_key_read(tmp_path: Path) -> None:
    root = write_toml(tmp_path, 'mirror = false\nclasses = ["b", "a"]\nmean = [0.5]\n'
                      "std = [0.25]\nchannels = 1\n")  # fmt: skip
    facts = read_facts(root)
    assert facts is not None and facts.path == root / "dataset.toml"
    assert (facts.mirror, facts.classes, facts.mean, facts.std, facts.channels) == (
        False, ("b", "a"), (0.5,), (0.25,), 1
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("mirror = 'no'\n", "mirror must be true or false"),
        ("mirror = 0\n", "mirror must be true or false"),
        ("mirorr = false\n", "unknown key(s) mirorr"),
        ("classes = 'a'\n", "classes must be a list of class folder names"),
        ("classes = []\n", "classes must be a list"),
        ("classes = ['a', 1]\n", "classes must be a list"),
        ("classes = ['a', 'b', 'a']\n", "classes names a more than once"),
        ("mean = [0.5]\n", "give mean and std together"),
        ("mean = [-0.1]\nstd = [0.2]\n", "mean must be a list of finite numbers >= 0"),
        ("mean = [nan]\nstd = [0.2]\n", "mean must be a list of finite numbers"),
        ("mean = [0.1]\nstd = [0]\n", "std must be a list of finite numbers > 0"),
        ("mean = [0.1]\nstd = [true]\n", "std must be a list"),
        ("mean = [0.1, 0.2]\nstd = [0.2]\n", "one value per channel each"),
        ("mean = [0.1, 0.2, 0.3]\nstd = [0.2, 0.2, 0.2]\nchannels = 1\n",
         "mean has 3 value(s) but channels = 1"),
        ("channels = 2\n", "channels must be 1 (grey) or 3 (RGB), not 2"),
        ("channels = true\n", "channels must be 1"),
        ("mirror = \n", "not valid TOML"),
    ],
)  # fmt: skip
def test_bad_dataset_toml_refused_in_one_line(tmp_path: Path, text: str, key: str) -> None:
    root = write_toml(tmp_path, text)
    with pytest.raises(DataError) as caught:
        read_facts(root)
    message = str(caught.value)
    assert message.startswith(f"{root / 'dataset.toml'}: ") and key in message
    assert "\n" not in message


def test_not_utf8_refused(tmp_path: Path) -> None:
    (tmp_path / "dataset.toml").write_bytes(b"mirror = \xff\n")
    with pytest.raises(DataError, match="dataset.toml: not valid TOML"):
        read_facts(tmp_path)


def digit_folder(root: Path, classes: tuple[str, ...] = ("a", "b", "c"), per_class: int = 4,
                 mode: str = "L") -> Path:  # fmt: skip
    """root/train/<class>/*.png and root/test/<class>/*.png: class k a bright column at k."""
    for split in ("train", "test"):
        for k, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                pixels = np.full((12, 12), 5 * i % 200, dtype=np.uint8)
                pixels[:, 2 + 3 * k] = 250
                Image.fromarray(pixels).convert(mode).save(folder / f"{i}.png")
    return root


def load_folder(root: Path, **options: object) -> Dataset:
    quiet = {"progress": False, "warn": lambda _: None, "cache_size": 12, **options}
    return load_dataset("folder", DataOptions(data_dir=str(root), **quiet))  # type: ignore[arg-type]


def test_folder_without_toml_is_mirrored_and_says_how_to_stop_it(tmp_path: Path) -> None:
    spec = load_folder(digit_folder(tmp_path)).spec
    assert spec.mirror_ok
    assert "mirror = false" in spec.mirror_why and "--no-mirror" in spec.mirror_why


def test_folder_facts_from_dataset_toml(tmp_path: Path) -> None:
    root = digit_folder(tmp_path)
    plain = load_folder(root)
    write_toml(root, 'mirror = false\nclasses = ["c", "a", "b"]\nmean = [0.5]\nstd = [0.25]\n')
    data = load_folder(root)
    assert not data.spec.mirror_ok and "dataset.toml says mirror = false" in data.spec.mirror_why
    assert data.spec.classes == ("c", "a", "b")
    assert (data.spec.mean, data.spec.std) == ((0.5,), (0.25,))
    # the same images, each under its class's new label
    order = {"a": 1, "b": 2, "c": 0}
    for split in ("train", "test"):
        before, after = getattr(plain, split), getattr(data, split)
        assert torch.equal(after.pixels(), before.pixels())
        expected = [order[plain.spec.classes[label]] for label in before.labels.tolist()]
        assert after.labels.tolist() == expected


def test_declared_channels_choose_the_colour(tmp_path: Path) -> None:
    root = digit_folder(tmp_path, mode="RGB")
    assert load_folder(root).spec.channels == 3
    write_toml(root, "channels = 1\n")
    assert load_folder(root).spec.channels == 1
    with pytest.raises(UsageError, match=r"--color rgb but .*dataset.toml says channels = 1"):
        load_folder(root, color="rgb")


@pytest.mark.parametrize(
    ("classes", "said"),
    [('["a", "b"]', "leaves out c"), ('["a", "b", "c", "d"]', "names d, which has no folder")],
)
def test_declared_classes_must_be_the_folders(tmp_path: Path, classes: str, said: str) -> None:
    root = write_toml(digit_folder(tmp_path), f"classes = {classes}\n")
    with pytest.raises(DataError, match=said):
        load_folder(root)


def test_declared_statistics_need_one_value_per_channel(tmp_path: Path) -> None:
    root = write_toml(digit_folder(tmp_path), "mean = [0.1, 0.1, 0.1]\nstd = [0.2, 0.2, 0.2]\n")
    with pytest.raises(DataError, match=r"dataset.toml: mean and std have 3 value\(s\) but the "
                       r"images have 1 channel"):  # fmt: skip
        load_folder(root)


# --- mirroring: the data's fact, or --no-mirror / --mirror --------------------------------


def specs() -> list[DataSpec]:
    """Every registered data set's spec, and a folder's (mirror undeclared and declared off)."""
    fixed = [entry.spec for entry in DATASETS.values() if entry.spec is not None]
    folder = DataSpec("folder", ("a", "b"), 1, 28, (0.5,), (0.25,), mirror_ok=True)
    declared = DataSpec("folder", ("a", "b"), 1, 28, (0.5,), (0.25,), mirror_ok=False)
    return [*fixed, folder, declared]


@pytest.mark.parametrize("spec", specs(), ids=lambda s: f"{s.name}-{s.mirror_ok}")
@pytest.mark.parametrize("augment", ["flip", "crop+altflip"])
def test_no_mirror_turns_every_mirror_off_for_every_data_set(spec: DataSpec, augment: str) -> None:
    config = make_config(overrides={**TINY, "augment": augment, "tta": True, "mirror": False})
    fitted, fitted_spec, line = decide_mirroring(config, spec)
    assert not any(m in fitted.augment for m in MIRRORS) and not fitted.tta
    assert fitted.augment == ("crop" if "crop" in augment else "none")
    assert not fitted_spec.mirror_ok
    assert line.startswith("mirroring off (") and line.endswith(": --no-mirror")


@pytest.mark.parametrize("spec", specs(), ids=lambda s: f"{s.name}-{s.mirror_ok}")
def test_without_the_flag_the_data_set_decides(spec: DataSpec) -> None:
    config = make_config(overrides={**TINY, "augment": "crop+flip", "tta": True})
    fitted, _, line = decide_mirroring(config, spec)
    assert (fitted.augment, fitted.tta) == (("crop+flip", True) if spec.mirror_ok else
                                            ("crop", False))  # fmt: skip
    state = "on (flip, flip TTA)" if spec.mirror_ok else "off (flip and flip TTA dropped)"
    assert line.startswith(f"mirroring {state}: {spec.name}: ")


def test_mirror_flag_keeps_flips_where_the_data_set_says_no() -> None:
    spec = DATASETS["mnist"].spec
    assert spec is not None
    config = make_config(overrides={**TINY, "augment": "flip", "tta": True, "mirror": True})
    fitted, fitted_spec, line = decide_mirroring(config, spec)
    assert (fitted.augment, fitted.tta, fitted_spec.mirror_ok) == ("flip", True, True)
    assert line == (
        "mirroring on (flip, flip TTA): --mirror, overriding mnist: a mirrored digit is "
        "another digit or none"
    )


def test_no_mirror_reaches_the_batches(tmp_path: Path) -> None:
    config = make_config(overrides={**TINY, "augment": "crop+flip", "tta": True, "mirror": False})
    run = build_trainer(config, data=synthetic_dataset(100, 100), run_dir=tmp_path, quiet=True)
    assert run.batches.train.augment == ("crop",) and not run.config.tta
    assert not run.spec.mirror_ok


@pytest.mark.parametrize(("flag", "value"), [("--no-mirror", False), ("--mirror", True)])
def test_mirror_flags_parse(capsys: pytest.CaptureFixture[str], flag: str, value: bool) -> None:
    code, out, _ = run_cli(capsys, "train", flag, "--dry-run")
    assert code == 0 and f"\nmirror: {str(value).lower()}\n" in out


def test_declared_mirror_found_without_reading_images(tmp_path: Path) -> None:
    options = DataOptions(data_dir=str(tmp_path))
    assert declared_mirror("mnist", options) == (False, "a mirrored digit is another digit or none")
    assert declared_mirror("folder", options)[0] is True  # type: ignore[index]
    write_toml(tmp_path, "mirror = false\n")
    assert declared_mirror("folder", options) == (
        False, f"{tmp_path / 'dataset.toml'} says mirror = false"
    )
    assert declared_mirror("folder", DataOptions(data_dir=str(tmp_path / "none"))) is None


# --- the run's first lines ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("toml", "flags", "line"),
    [
        (None, (), "note: mirroring on (flip): folder: a mirror image is taken to keep its label"),
        ("mirror = false\n", (), "note: mirroring off (flip dropped): folder: {root}/dataset.toml "
         "says mirror = false"),
        (None, ("--no-mirror",), "note: mirroring off (flip dropped): --no-mirror"),
        (None, ("--augment", "crop"), "note: mirroring off: the settings ask for no flip and no "
         "flip TTA (folder: "),
    ],
)  # fmt: skip
def test_the_run_says_whether_it_mirrors_before_it_trains(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], toml: str | None, flags: tuple[str, ...],
    line: str,
) -> None:  # fmt: skip
    root = digit_folder(tmp_path / "data", per_class=3)
    if toml is not None:
        write_toml(root, toml)
    settings = {**TINY, "epochs": 1, "image_size": 12, "batch_size": 9}
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    code, out, err = run_cli(
        capsys, "train", *argv, "--augment", "flip", *flags, "--dataset", "folder",
        "--data-dir", str(root), "--out", str(tmp_path / "run"),
    )  # fmt: skip
    assert code == 0, err
    expected = line.format(root=root)
    lines = out.splitlines()
    said = [n for n, text in enumerate(lines) if text.startswith(expected)]
    training = [n for n, text in enumerate(lines) if text.startswith("training ")]
    assert len(said) == 1 and said[0] < training[0], out


def test_a_run_mirrored_against_the_data_is_evaluated_as_it_was_trained(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_toml(digit_folder(tmp_path / "data", per_class=3), "mirror = false\n")
    settings = {**TINY, "epochs": 1, "image_size": 12, "batch_size": 9}
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in settings.items()]
    run = str(tmp_path / "run")
    code, out, err = run_cli(
        capsys, "train", *argv, "--augment", "altflip", "--tta", "--mirror", "--dataset",
        "folder", "--data-dir", str(root), "--out", run,
    )  # fmt: skip
    assert code == 0, err
    assert "note: mirroring on (altflip, flip TTA): --mirror, overriding folder: " in out
    for tta in ("--tta", "--no-tta"):
        code, out, err = run_cli(capsys, "eval", run, tta)
        assert code == 0 and "test accuracy" in out, err


# --- a minimum of optimizer steps -----------------------------------------------------------

SIZES = (1, 100, 1_000, 4_000, 50_000, 60_000, 1_000_000)


PRECISIONS = ("fp32", "bf16")


def on_cpu(recipe: str, precision: str, **settings: object) -> TrainConfig:
    """A recipe's settings for a CPU run at this precision (which picks its fp32 or bf16 ones)."""
    return make_config(recipe, overrides={"device": "cpu", "precision": precision, **settings})


def basis(recipe: str, precision: str) -> str:
    fp32 = precision == "fp32" and recipe in RECIPE_BASIS_FP32
    return RECIPE_BASIS_FP32[recipe] if fp32 else RECIPE_BASIS[recipe]


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_every_recipe_has_a_minimum_counted_on_its_basis(recipe: str, precision: str) -> None:
    config = on_cpu(recipe, precision)
    assert config.min_steps is not None and recipe in RECIPE_BASIS
    if "at 60,000 images" in basis(recipe, precision):
        assert basis(recipe, precision).startswith(f"{config.epochs} epochs")
        assert config.min_steps == config.epochs * steps_per_epoch(60_000, config.batch_size)
    else:  # cifar-paper: the paper's 64k iterations, about its 164 epochs of 391 steps
        assert config.min_steps == 64_000
        assert config.epochs * steps_per_epoch(50_000, config.batch_size) >= config.min_steps


@pytest.mark.parametrize("precision", PRECISIONS)
@pytest.mark.parametrize("recipe", sorted(RECIPES))
@pytest.mark.parametrize("images", SIZES)
def test_recipes_train_at_least_their_steps_on_any_size(
    recipe: str, images: int, precision: str
) -> None:
    config = on_cpu(recipe, precision)
    stretched, line = stretch_to_min_steps(config, images)
    per_epoch = steps_per_epoch(images, config.batch_size)
    assert config.min_steps is not None
    assert stretched.epochs * per_epoch >= config.min_steps
    assert stretched.epochs >= config.epochs
    if stretched.epochs > config.epochs:  # no more epochs than needed
        assert (stretched.epochs - 1) * per_epoch < config.min_steps
        assert f"{stretched.epochs} epochs" in line and f"min_steps {config.min_steps:,}" in line
        assert line.startswith(
            f"{recipe}: {basis(recipe, precision)}; at {images:,} training images"
        )
    else:
        assert stretched == config
    # epochs-based settings keep their share of training, and the run evaluates as often
    factor = stretched.epochs / config.epochs
    assert stretched.milestones == pytest.approx([m * factor for m in config.milestones])
    assert stretched.warmup_epochs == pytest.approx(config.warmup_epochs * factor)
    evals = math.ceil(config.epochs / config.eval_every)
    assert abs(math.ceil(stretched.epochs / stretched.eval_every) - evals) <= 1
    # the schedule spans the stretched run: onecycle peaks in its first quarter, ends near 0
    total = stretched.epochs * per_epoch
    if config.schedule == "onecycle":
        rates = [learning_rate(stretched, s, total, per_epoch) for s in range(0, total, 7)]
        peak = max(range(len(rates)), key=rates.__getitem__) * 7
        assert peak <= total / 4 + 7
        assert learning_rate(stretched, total - 1, total, per_epoch) < 0.01 * config.lr


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_epochs_given_by_the_user_win_over_the_minimum(tmp_path: Path, recipe: str) -> None:
    assert make_config(recipe, overrides={"epochs": 3}).min_steps is None
    file = tmp_path / "settings.toml"
    file.write_text("epochs = 4\n")
    assert make_config(recipe, config_file=file).min_steps is None
    both = make_config(recipe, overrides={"epochs": 3, "min_steps": 50})
    assert (both.epochs, both.min_steps) == (3, 50)


def test_a_run_on_few_images_trains_the_minimum_of_steps(tmp_path: Path) -> None:
    config = make_config(overrides={**TINY, **PLANNED, "min_steps": 9, "eval_every": 2})
    data = synthetic_dataset(n_train=100, n_test=100)  # 2 steps of 50 an epoch
    run = build_trainer(config, data=data, run_dir=tmp_path / "run", quiet=True)
    assert (run.config.epochs, run.config.eval_every) == (5, 5)
    steps = []
    run.on_step = lambda _, step: steps.append(step)
    run.fit()
    assert steps[-1] == 10 and len(run.history) == 5
    tested = [row["epoch"] for row in run.history if row["test_acc"] is not None]
    assert tested == [5]
    # resumed as it was, the run keeps its minimum; epochs asked for now win over it
    kept = resume_config(tmp_path / "run")[2]
    assert (kept.epochs, kept.min_steps) == (5, 9)
    again = resume_config(tmp_path / "run", {"epochs": 7})[2]
    assert (again.epochs, again.min_steps) == (7, None)


def test_count_of_training_images_without_decoding(tmp_path: Path) -> None:
    root = digit_folder(tmp_path / "split", per_class=4)
    options = DataOptions(data_dir=str(root))
    assert count_train_images("folder", options) == 12
    assert count_train_images("folder", options, train_samples=5) == 5
    flat = tmp_path / "flat"
    for k in range(2):
        for i in range(10):
            (flat / str(k)).mkdir(parents=True, exist_ok=True)
            Image.new("L", (8, 8), 10 * i).save(flat / str(k) / f"{i}.png")
    assert count_train_images("folder", DataOptions(data_dir=str(flat))) == 16  # 20% held out
    assert count_train_images("mnist", options, val_fraction=0.1) == 54_000
    assert count_train_images("folder", DataOptions(data_dir=str(tmp_path / "none"))) is None


def test_dry_run_shows_the_resolved_epochs_and_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_toml(digit_folder(tmp_path, per_class=40), "mirror = false\n")
    code, out, _ = run_cli(capsys, "train", "--recipe", "quick", "--dataset", "folder",
                           "--data-dir", str(root), "--precision", "bf16", "--dry-run")  # fmt: skip
    assert code == 0
    assert (
        "# epochs: quick: 9 epochs at 60,000 images; at 120 training images (1 steps of 512), "
        "1062 epochs (1,062 steps) to reach min_steps 1,062 instead of 9 (9 steps)"
    ) in out.replace("1,062 epochs", "1062 epochs")
    assert "# mirroring off (altflip and flip TTA dropped): folder: " in out
    assert "\nepochs: 1062\n" in out and "\naugment: none\n" in out and "\ntta: false\n" in out
    code, out, _ = run_cli(capsys, "train", "--recipe", "quick", "--dataset", "folder",
                           "--data-dir", str(root), "--epochs", "6", "--precision", "bf16",
                           "--dry-run")  # fmt: skip
    assert "\nepochs: 6\n" in out and "\nmin_steps: null\n" in out


def test_dry_run_refuses_a_bad_dataset_toml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = write_toml(digit_folder(tmp_path), "mirror = 'no'\n")
    code, _, err = run_cli(capsys, "train", "--dataset", "folder", "--data-dir", str(root),
                           "--dry-run")  # fmt: skip
    assert code == 2
    assert err.strip().endswith(f"{root / 'dataset.toml'}: mirror must be true or false, not 'no'")


# --- flip TTA that lowers the accuracy ------------------------------------------------------


def sided(n: int, seed: int, across: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """16x16 images with a bright blob: its class is the half it sits in, left or right
    (`across`: a mirror image is the other class) or top or bottom (a mirror keeps it)."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % 2
    images = torch.randint(0, 40, (n, 16, 16), generator=g, dtype=torch.uint8)
    for i, label in enumerate(labels.tolist()):
        a, b = (int(v) for v in torch.randint(0, 5, (2,), generator=g))
        row, col = (2 + a, 1 + 8 * label + b) if across else (1 + 8 * label + b, 2 + a)
        images[i, row : row + 4, col : col + 3] = 240
    return images, labels


@pytest.mark.parametrize("across", [True, False], ids=["left-right", "top-bottom"])
def test_warns_when_flip_tta_lowers_the_test_accuracy(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], across: bool
) -> None:
    spec = DataSpec("sides", ("one", "two"), 1, 16, (0.1,), (0.2,), mirror_ok=True)
    data = Dataset.from_tensors(spec, *sided(200, 1, across), *sided(100, 2, across))
    config = make_config(overrides={**TINY, **PLANNED, "epochs": 2, "tta": True})
    run = build_trainer(config, data=data, run_dir=tmp_path / "run", quiet=False,
                        log=lambda _: None)  # fmt: skip
    run.fit()
    out = capsys.readouterr().out
    warned = "warning: flip TTA lowers the test accuracy from" in out
    assert warned == across, out
    if across:
        assert "a sign that mirroring changes what the images mean; try --no-mirror\n" in out
        averaged = run.evaluate("test")  # each image with its mirror: left and right alike
        assert averaged["acc"] <= 0.6


def test_evaluation_compares_with_and_without_tta_at_no_cost_to_its_figures(
    tmp_path: Path,
) -> None:
    config = make_config(overrides={**TINY, "epochs": 1, "tta": True})
    run = build_trainer(config, data=synthetic_dataset(100, 100), run_dir=tmp_path / "r",
                        quiet=True)  # fmt: skip
    plain, compared = run.evaluate("test"), run.evaluate("test", compare_tta=True)
    assert compared["acc"] == plain["acc"] == compared["acc_tta"]
    assert compared["confusion"] == plain["confusion"]
    run.config.tta = False
    assert run.evaluate("test")["acc"] == compared["acc_plain"]


@pytest.mark.parametrize(
    ("name", "plain", "tta", "said"),
    [
        ("folder", 0.95, 0.83, "try --no-mirror or declare mirror = false in dataset.toml"),
        ("fashion-mnist", 0.95, 0.83, "try --no-mirror"),
        ("folder", 0.950, 0.946, None),  # within half a point: noise, not a sign
        ("folder", 0.90, 0.95, None),  # TTA helped
    ],
)
def test_the_warning_names_the_fix_for_the_data_set(
    name: str, plain: float, tta: float, said: str | None
) -> None:
    notes: list[str] = []
    trainer = SimpleNamespace(spec=SimpleNamespace(name=name), _notice=notes.append)
    Trainer._warn_if_tta_hurts(trainer, {"acc_plain": plain, "acc_tta": tta})  # type: ignore[arg-type]
    if said is None:
        assert notes == []
    else:
        assert len(notes) == 1 and notes[0].endswith(said)
        assert f"from {plain:.2%} (images as they are) to {tta:.2%}" in notes[0]


# --- a recipe resolved per CPU class ----------------------------------------------------------


@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_a_recipe_takes_its_fp32_settings_only_where_the_run_computes_in_fp32_on_the_cpu(
    recipe: str,
) -> None:
    plain = {**TrainConfig().to_dict(), **RECIPES[recipe]}
    assert on_cpu(recipe, "bf16").to_dict() == {**plain, "device": "cpu", "precision": "bf16"}
    fp32 = on_cpu(recipe, "fp32").to_dict()
    assert fp32 == {**plain, **RECIPES_FP32.get(recipe, {}), "device": "cpu", "precision": "fp32"}
    assert recipe_settings(recipe, "fp32", "cuda") == RECIPES[recipe]  # a GPU: one set
    assert recipe_settings(recipe, "bf16", "cpu") == RECIPES[recipe]


@pytest.mark.parametrize("recipe", sorted(RECIPES_FP32))
def test_the_fp32_settings_quarter_the_work_and_train_as_many_images(recipe: str) -> None:
    bf16, fp32 = on_cpu(recipe, "bf16"), on_cpu(recipe, "fp32")
    assert (fp32.stem_stride, bf16.stem_stride) == (2, 1)
    assert fp32.min_steps is not None and bf16.min_steps is not None
    assert fp32.epochs > bf16.epochs  # cheaper steps pay for more epochs
    assert fp32.lr / fp32.batch_size == pytest.approx(bf16.lr / bf16.batch_size)  # linear rule
    assert fp32.eval_every == fp32.epochs  # tested once, at the end, as the bf16 settings are


@pytest.mark.parametrize(
    ("env", "native", "fp32"),
    [({}, True, False), ({}, False, True), ({"ONEDNN_MAX_CPU_ISA": "AVX2"}, True, True),
     ({"ATEN_CPU_CAPABILITY": "avx2"}, True, True)],
)  # fmt: skip
def test_auto_follows_the_cpu_class(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], native: bool, fp32: bool
) -> None:
    """`--precision auto` takes the fp32 settings where the CPU has no native bf16, and the
    variables that cap the kernels at AVX2 count as no native bf16."""
    for name in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    config_module.cpu_has_native_bf16.cache_clear()
    flags = "flags\t: fpu avx2 avx512_bf16\n" if native else "flags\t: fpu avx2\n"
    real_read = Path.read_text

    def read_text(self: Path, *args: object, **kwargs: object) -> str:
        return flags if str(self) == "/proc/cpuinfo" else real_read(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr("resnets.training.runtime.Path.read_text", read_text)
    try:
        assert computes_fp32_on_cpu("auto", "cpu") is fp32
        assert (make_config("fast", overrides={"device": "cpu"}).stem_stride == 2) is fp32
        assert computes_fp32_on_cpu("bf16", "cpu") is False
        assert computes_fp32_on_cpu("fp32", "cpu") is True
    finally:
        config_module.cpu_has_native_bf16.cache_clear()


def test_flags_and_files_win_over_either_set(tmp_path: Path) -> None:
    assert on_cpu("quick", "fp32", batch_size=128, stem_stride=1).batch_size == 128
    assert on_cpu("fast", "fp32", stem_stride=1, stem_pool=False).stem_stride == 1
    with pytest.raises(UsageError, match="add --stem-stride 2 \\(or --no-stem-pool\\)"):
        on_cpu("fast", "fp32", stem_stride=1)  # fp32 fast's pooled stem needs its stride 2
    file = tmp_path / "settings.toml"
    file.write_text('precision = "fp32"\ndevice = "cpu"\nlr = 0.3\n')
    from_file = make_config("fast", config_file=file)
    assert (from_file.stem_stride, from_file.lr, from_file.batch_size) == (2, 0.3, 512)


@pytest.mark.parametrize("recipe", sorted(RECIPES_FP32))
@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_run_says_which_settings_it_took_and_why(recipe: str, precision: str) -> None:
    config = on_cpu(recipe, precision)
    note = recipe_note(recipe, config)
    assert note is not None and note.startswith(f"recipe {recipe}: its {precision} settings")
    assert f"{config.epochs} epochs of {config.batch_size}" in note
    assert ("stride 2" in note) is (precision == "fp32")
    assert ("by a max pool" in note) is config.stem_pool
    assert recipe_note("chapter", on_cpu("chapter", precision)) is None  # one set only


def test_dry_run_names_the_settings_taken(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(capsys, "train", "--recipe", "fast", "--precision", "fp32",
                             "--device", "cpu", "--data-dir", str(tmp_path),
                             "--dry-run")  # fmt: skip
    assert code == 0, err
    assert "# recipe fast: its fp32 settings, resnet18 at width 0.25 (small-input stem at " in out
    assert "\nstem_stride: 2\nstem_pool: true\n" in out and "\nbatch_size: 512\n" in out
