"""Every network of the registry, at image sizes from the smallest each takes up to 224 px, with
batches of 1, 2 and odd sizes, in fp32 and bf16, channels-last on and off: each combination
either works all the way, or is refused in one line (a UsageError) before any data is read.

"All the way" is the memory plan (its meta-device lower bound and its measured probes), one
epoch of training on batch + 1 images (so the last batch holds one image and must be joined
to the one before where BatchNorm cannot train on it), evaluation, prediction with
`resnets.predict.Classifier`, and export (`resnets.export`: safetensors for every case, and
ONNX and .pt2 for a rotating share). The refusal is expected exactly where the network's last
map is 1x1 and the batch is a single image (`resnets.models.geometry`); --dry-run must refuse
the same settings the same way, and accept the others after sizing the plan's lower bound.

Sizes: every network takes any side from 1 px (each layer pads k // 2, so no map vanishes),
so the matrix runs 1, 3, 12, 28, 32, 33, 97 and 224, and for each network the two sides where
its last map stops being 1x1 (5 and 9, or 32 and 33, ...), where the refusal and the join are
decided. Networks run at width 1/8 (the bottleneck ones round up to multiples of 4 channels)
to keep the real steps cheap; ONNX and .pt2 exports (slow to trace) go with networks of at
most 16 blocks.

What runs on the meta device instead (shapes only, nothing computed): a combination whose
maps are large for the depth (`real_cost` above REAL_LIMIT: the CIFAR networks, which keep
their input's size through the first stage, at 97 and 224 px), and the two networks of more
than a thousand layers, cifar_resnet1202 and cifar_preact_resnet1001, at 1, 33 and 224 px and
their edge sides (one real step of cifar_resnet1202 took minutes on 2 shared cores even at
width 1/8, from the number of layers, not their size). On the meta device the combination
still goes through the settings' check, the plan's lower bound, and a training-mode forward
and backward pass of the batch (BatchNorm's check of values per channel runs there too), and
of the joined last batch; predict and export need real weights, and are covered for these
networks by their real runs at smaller sizes, and for the deepest two by their shallower
siblings' (same blocks and strides).

The default suite runs a cheap slice (the issue's combination, the chapter's network at 28 px,
and a few tiny networks); the rest is marked `matrix` (and slow), which `make test` leaves out
for time (it is hundreds of real training runs) and `make test-matrix` runs. Each
combination's refusal or success is asserted, never skipped.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from PIL import Image

from resnets.cli import main
from resnets.data import FASHION_MNIST, Dataset, DataSpec
from resnets.errors import UsageError
from resnets.export import export_network
from resnets.models import MODEL_SPECS, create_model, list_models
from resnets.models.geometry import (
    fewest_training_images,
    map_sides,
    smallest_side_for_one_image,
)
from resnets.predict import Classifier
from resnets.training import build_trainer, make_config

WIDTH = 0.125
SIZES = (1, 3, 12, 28, 32, 33, 97, 224)
DEEPEST_SIZES = (1, 33, 224)
BATCHES = (1, 2, 3, 5)
PRECISIONS = ("fp32", "bf16")
LAYOUTS = (False, True)  # channels-last
# The networks whose every step is slow for their number of layers: meta device only.
DEEPEST = ("cifar_resnet1202", "cifar_preact_resnet1001")
# Above this many block-pixels (blocks x map area, summed over stages, times images) a
# combination runs on the meta device: about a second of CPU at width 1/8.
REAL_LIMIT = 150_000
RGB = DataSpec("rgb-squares", ("a", "b", "c"), 3, 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))


@dataclass(frozen=True)
class Case:
    model: str
    size: int
    batch: int
    precision: str
    channels_last: bool
    export: str  # "safetensors", "onnx" or "pt2" (safetensors is always written as well)

    @property
    def id(self) -> str:
        layout = "-cl" if self.channels_last else ""
        return f"{self.model}-{self.size}px-b{self.batch}-{self.precision}{layout}-{self.export}"


def real_cost(model: str, size: int, batch: int) -> int:
    """Block-pixels of a training pass: blocks of each stage times its map's area, summed,
    times the images (what a step's time on the CPU grows with at these widths)."""
    sides = map_sides(model, size)[1:]
    blocks = MODEL_SPECS[model].layers
    return batch * sum(n * side * side for n, side in zip(blocks, sides, strict=True))


def on_meta(case: Case) -> bool:
    return case.model in DEEPEST or real_cost(case.model, case.size, case.batch) > REAL_LIMIT


def all_cases() -> list[Case]:
    """Every network at every size; the (batch, precision, layout, export) of each cell turns
    through all 4 x 2 x 2 combinations (and 3 exports) as the cells go, so each network meets
    every batch size, precision and layout at some size, and each size meets all of them
    across the networks. Batch 1 and 2 also run at each network's sizes where the last map is
    1x1 and just above, where the refusal and the join are decided."""
    turns = list(itertools.product(BATCHES, PRECISIONS, LAYOUTS))
    exports = ("safetensors", "pt2", "safetensors", "onnx")
    cases: list[Case] = []
    cell = 0
    for m, model in enumerate(list_models()):
        shallow = sum(MODEL_SPECS[model].layers) <= 16
        for s, size in enumerate(DEEPEST_SIZES if model in DEEPEST else SIZES):
            batch, precision, layout = turns[(m + 5 * s) % len(turns)]
            export = exports[cell % 4] if shallow else "safetensors"
            cases.append(Case(model, size, batch, precision, layout, export))
            cell += 1
        refused_at, trains_at = edge_sizes(model)
        for size, batch in ((refused_at, 1), (refused_at, 2), (trains_at, 1)):
            if not any(c.model == model and c.size == size and c.batch == batch
                       for c in cases):  # fmt: skip
                cases.append(Case(model, size, batch, "fp32", False, "safetensors"))
    return cases


def edge_sizes(model: str) -> tuple[int, int]:
    """The largest side whose last map is 1x1, and the next one."""
    last_single = max(s for s in range(1, 300) if map_sides(model, s)[-1] == 1)
    return last_single, last_single + 1


# A tuple, not a set: a set of strings iterates in a per-process hash order, and pytest-xdist
# requires every worker to collect the same tests in the same order.
CHEAP = (
    Case("d2l_resnet18", 28, 1, "fp32", False, "safetensors"),  # the network and size
    Case("d2l_resnet18", 28, 2, "fp32", False, "safetensors"),  # 3 images: the last joined
    Case("cifar_resnet20", 3, 3, "bf16", True, "safetensors"),  # 1x1 last map, odd batch
)


def parametrised() -> list[object]:
    cases = all_cases()
    cases += [c for c in CHEAP if c not in cases]
    return [
        pytest.param(c, id=c.id, marks=() if c in CHEAP else (pytest.mark.slow, pytest.mark.matrix))
        for c in cases
    ]


def images(n: int, spec: DataSpec, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    shape = (n, spec.channels, spec.size, spec.size)
    labels = torch.arange(n) % spec.num_classes
    return torch.randint(0, 256, shape, generator=g, dtype=torch.uint8), labels


def data_for(case: Case) -> Dataset:
    """batch + 1 training images (a last batch of one) and 3 test images; 1-channel
    Fashion-MNIST-like for the chapter's and CIFAR networks, 3 channels for the others."""
    spec = RGB if MODEL_SPECS[case.model].in_channels == 3 and "cifar" not in case.model else (
        FASHION_MNIST.spec
    )  # fmt: skip
    train, test = images(case.batch + 1, spec, 1), images(3, spec, 2)
    return Dataset.from_tensors(spec, *train, *test)


def settings(case: Case) -> dict[str, object]:
    return {
        "model": case.model, "width": WIDTH, "image_size": case.size, "batch_size": case.batch,
        "eval_batch_size": 2, "epochs": 1, "lr": 0.01, "precision": case.precision,
        "channels_last": case.channels_last, "device": "cpu",
    }  # fmt: skip


def assert_one_line(error: BaseException) -> str:
    message = str(error)
    assert message and len(message.splitlines()) == 1, message
    return message


def dry_run(case: Case, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    argv = ["train", "--dry-run", "--data-dir", "/nonexistent", "--model", case.model,
            "--width", str(WIDTH), "--image-size", str(case.size),
            "--batch-size", str(case.batch), "--precision", case.precision]  # fmt: skip
    capsys.readouterr()
    code = main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("case", parametrised())
def test_each_combination_trains_or_is_refused_in_one_line(
    case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fewest = fewest_training_images(case.model, case.size)
    code, out, err = dry_run(case, capsys)
    if case.batch < fewest:
        with pytest.raises(UsageError) as refused:
            make_config(overrides=settings(case))
        message = assert_one_line(refused.value)
        assert "1x1 map" in message and "BatchNorm" in message and f"{case.size}px" in message
        assert code == 2 and len(err.strip().splitlines()) == 1 and "1x1 map" in err
        return
    assert code == 0, err
    assert f"a training pass takes at least {fewest} image" in out
    config = make_config(overrides=settings(case))
    data = data_for(case)
    if on_meta(case):
        check_on_meta(case, data.spec, fewest)
        return
    run_dir = tmp_path / "run"
    trainer = build_trainer(config, data=data, run_dir=run_dir, quiet=True, log=lambda _: None)
    steps = len(trainer.batches.train)
    # batch + 1 images: the one left over is a batch of its own unless BatchNorm needs two
    assert steps == (1 if fewest == 2 else 2)
    summary = trainer.fit()
    assert summary["epochs"] == 1 and 0 <= summary["final_test_acc"] <= 1
    assert math.isfinite(trainer.history[-1]["train_loss"])

    classifier = Classifier.from_checkpoint(run_dir)
    spec = data.spec
    mode = "L" if spec.channels == 1 else "RGB"
    picture = Image.new(mode, (spec.size, spec.size), color=128 if mode == "L" else (9, 99, 199))
    predictions = classifier.predict([picture, picture], top_k=2, batch_size=1)
    assert len(predictions) == 2 and predictions[0].label in spec.classes
    assert predictions[0].label == predictions[1].label  # one image at a time, in eval mode

    written = export_network(run_dir, "safetensors", tmp_path / "model.safetensors")
    assert written.image_size == case.size and written.max_abs_diff <= 1e-3
    if case.export != "safetensors" and not pytest_extra_missing(case.export):
        exported = export_network(run_dir, case.export, tmp_path / f"model.{case.export}")
        assert exported.path.exists() and exported.image_size == case.size


def pytest_extra_missing(format: str) -> bool:
    """ONNX needs the `export` extra; without it the export is refused in one line, which
    test_export covers: here the matrix then writes the other formats."""
    if format != "onnx":
        return False
    try:
        import onnxruntime  # noqa: F401, PLC0415
    except ImportError:
        return True
    return False


def check_on_meta(case: Case, spec: DataSpec, fewest: int) -> None:
    """A training-mode forward and backward of the batch and of the joined last batch, on
    the meta device (the dry run before it sized the plan's lower bound there)."""
    kwargs = {"in_channels": spec.channels, "num_classes": spec.num_classes, "width": WIDTH}
    shape = (spec.channels, case.size, case.size)
    with torch.device("meta"):
        model = create_model(case.model, **kwargs)
    model.train()
    layout = torch.channels_last if case.channels_last else torch.contiguous_format
    for images in {case.batch, case.batch + 1 if fewest > 1 else 1}:
        x = torch.empty((images, *shape), device="meta").contiguous(memory_format=layout)
        logits = model(x)
        assert logits.shape == (images, spec.num_classes)
        logits.sum().backward()
    assert map_sides(case.model, case.size)[-1] >= 1


# ---- the map sides the refusal rests on --------------------------------------------------------

GEOMETRY_SIZES = (1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 17, 28, 32, 33, 64, 65, 97)


def stems(model: str) -> list[tuple[bool, int, bool]]:
    """Every stem a network can have, as (small_input, stem_stride, stem_pool): its own, the
    small-input one, and the small-input one at stride 2 by its conv or by a max pool (a CIFAR
    network's own stem is the small-input one)."""
    cifar = MODEL_SPECS[model].stem == "cifar"
    own = [(False, 1, False)] if cifar else [(False, 1, False), (True, 1, False)]
    return [*own, (not cifar, 2, False), (not cifar, 2, True)]


def geometry_params(pooled: bool = True) -> list[object]:
    """One case per network and stem; the pooled stems only with `pooled` (the geometry's
    functions take the stride alone: a pooled stem must give the maps of the stride-2 conv)."""
    cheap = (("d2l_resnet18", False, 1, False), ("cifar_resnet20", False, 1, False),
             ("resnet18", True, 2, False), ("resnet18", True, 2, True))
    return [
        pytest.param(model, small, stride, pool,
                     id=f"{model}{'-small' if small else ''}{'-s2' if stride == 2 else ''}"
                        f"{'-pool' if pool else ''}",
                     marks=() if (model, small, stride, pool) in cheap else (pytest.mark.slow,))
        for model in list_models() if model not in DEEPEST
        for small, stride, pool in stems(model) if pooled or not pool
    ]  # fmt: skip


@pytest.mark.parametrize(("model", "small_input", "stem_stride", "stem_pool"), geometry_params())
def test_map_sides_are_those_of_a_real_forward_pass(
    model: str, small_input: bool, stem_stride: int, stem_pool: bool
) -> None:
    """`map_sides` (from the spec row) against the network's own maps, in eval mode at width
    1/16, at odd and even sides around each halving, for every stem. (cifar_resnet1202 and
    cifar_preact_resnet1001 share their stem and strides with cifar_resnet20 and
    cifar_preact_resnet164, checked here, and differ only in blocks per stage.)"""
    network = create_model(
        model, width=0.0625, small_input=small_input, stem_stride=stem_stride,
        stem_pool=stem_pool,
    ).eval()
    for size in GEOMETRY_SIZES:
        with torch.no_grad():
            maps = network.forward_stages(torch.zeros(1, network.in_channels, size, size))
        sides = map_sides(model, size, small_input, stem_stride)
        assert tuple(m.shape[-1] for m in maps.values()) == sides


@pytest.mark.parametrize(
    ("model", "small_input", "stem_stride", "stem_pool"), geometry_params(pooled=False)
)
def test_the_smallest_side_for_one_image_is_the_edge(
    model: str, small_input: bool, stem_stride: int, stem_pool: bool
) -> None:
    """The side the refusal suggests is the first that lets one image train, and one pixel
    less needs two: the suggestion is neither too cautious nor wrong, for every stem."""
    edge = smallest_side_for_one_image(model, small_input, stem_stride)
    assert fewest_training_images(model, edge, small_input, stem_stride) == 1
    assert fewest_training_images(model, edge - 1, small_input, stem_stride) == 2


def test_the_deepest_networks_share_their_siblings_geometry() -> None:
    for deep, sibling in zip(DEEPEST, ("cifar_resnet20", "cifar_preact_resnet164"), strict=True):
        assert MODEL_SPECS[deep].stem == MODEL_SPECS[sibling].stem
        assert len(MODEL_SPECS[deep].layers) == len(MODEL_SPECS[sibling].layers)
        assert all(map_sides(deep, s) == map_sides(sibling, s) for s in SIZES)


def test_the_matrix_covers_every_network_size_batch_precision_and_layout() -> None:
    cases = all_cases()
    for model in list_models():
        mine = [c for c in cases if c.model == model]
        assert {c.size for c in mine} >= set(DEEPEST_SIZES if model in DEEPEST else SIZES)
        batches = {c.batch for c in mine}
        assert batches == set(BATCHES) or model in DEEPEST and {1, 2} < batches, model
        assert {c.precision for c in mine} == set(PRECISIONS), model
        assert {c.channels_last for c in mine} == set(LAYOUTS), model
    assert {c.export for c in cases} == {"safetensors", "onnx", "pt2"}
    real = [c for c in cases if not on_meta(c)]
    assert {c.model for c in real} == set(list_models()) - set(DEEPEST)
    assert {c.size for c in real} >= set(SIZES)
