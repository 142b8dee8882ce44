"""Shared fixtures: the reference folder `../shared` and a tiny generated CelebA-Spoof tree.

The suite runs on every core (pytest-xdist, `-n` in pyproject.toml). The expensive session fixtures are
built once per run, not once per worker: `shared_path` lets the first worker that needs one build it
under the run's common temporary folder while the others wait, then reuse it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import cv2
import pytest
import torch
from filelock import FileLock

from fas.convention import InputConvention
from fas.data.synthetic import SyntheticConfig, generate
from fas.hydra_utils import register_resolvers

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("FAS_SHARED_DIR", REPO_ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"

TINY = SyntheticConfig(train_subjects=4, test_subjects=2, images_per_subject=12, live_fraction=0.4, seed=3)

# The cores are shared among the pytest-xdist workers: threads per worker (and its subprocesses, through
# OMP_NUM_THREADS), so that two workers on two cores do not run four threads.
THREADS = max(1, min(2, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
os.environ["OMP_NUM_THREADS"] = str(THREADS)
torch.set_num_threads(THREADS)
cv2.setNumThreads(THREADS)
register_resolvers()  # as the apps do: configs/augmentation/ and configs/logger/wandb.yaml use them
# The suite's own fas cache (downloads, image checks): never the user's ~/.cache/fas. Subprocesses inherit it.
os.environ.setdefault("FAS_CACHE_DIR", tempfile.mkdtemp(prefix="fas-test-cache-"))


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Every test starts from the same torch RNG state: torch seeds its default generator at random in
    each process, so unseeded weight initialisation would change from run to run."""
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(f"reference folder {REFERENCE} is absent (CI has it beside the repo as ../shared)")
    return REFERENCE


def shared_path(tmp_path_factory: pytest.TempPathFactory, name: str, build: Callable[[Path], None]) -> Path:
    """`<run temp>/<name>`, made by `build(path)` once per test run, whichever pytest-xdist worker asks first."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # the run's folder, above each worker's own
    target, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(target, ignore_errors=True)
            target.mkdir(parents=True)
            build(target)
            done.touch()
    return target


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 72-image synthetic dataset in the CelebA-Spoof layout (generated once per test run)."""
    return shared_path(tmp_path_factory, "tiny_data", lambda path: generate(path, TINY, workers=1))


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same tiny dataset as a user's folder tree (train/ and test/, class folders, subject folders, a pixel
    _BB.txt beside every other image, two live and two replay clips per split) with its manifest.csv."""
    from fas.data.synthetic import generate_folder

    def build(path: Path) -> None:
        generate_folder(path, TINY, videos=2, frames_per_clip=12)

    return shared_path(tmp_path_factory, "tiny_folder", build)


CONFIG_DIR = REPO_ROOT / "configs"

TINY_DATA = [
    "data=celeba_spoof",
    "data.num_workers=0",
    "data.batch_size=8",
    "data.eval_batch_size=16",
    "+trainer.enable_progress_bar=false",
]
# Training runs in tests skip the ONNX export callback (tests/test_export_pipeline.py runs it).
TINY_RUN = [*TINY_DATA, "~callbacks.export"]


@pytest.fixture(scope="session")
def short_fit(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> Path:
    """The run directory of a 6-epoch training on `tiny_data` (64 px, AdamW), shared by the train and
    evaluate tests: trained enough that its spoof scores spread out instead of all sitting near 0.5."""
    from fas.train import train

    def build(run_dir: Path) -> None:
        overrides = [f"data.root={tiny_data}", "convention.input_size=64", "optimizer=adamw", "trainer.max_epochs=6"]
        cfg = compose_train([*TINY_RUN, *overrides, "trainer.log_every_n_steps=1", "seed=0"], run_dir)
        metric, metrics = train(cfg)
        assert metric == pytest.approx(float(metrics["test/auroc"]))

    return shared_path(tmp_path_factory, "short_fit", build)


@pytest.fixture(scope="session")
def ranked_checkpoint(short_fit: Path, tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The short run's best checkpoint with BatchNorm statistics re-estimated on the training images.

    Six epochs on 36 images leave the running statistics so far behind the weights that every eval-mode
    score sits within ~1e-5 of the others, and float noise between backends reorders near-ties. Statistics
    re-estimated on the training images spread the scores over (0, 1), so parity is tested on a real ranking.
    """
    return shared_path(tmp_path_factory, "ranked", lambda path: recalibrate(short_fit, tiny_data, path)) / (
        "recalibrated.ckpt"
    )


def recalibrate(short_fit: Path, tiny_data: Path, folder: Path) -> None:
    from fas.module import LivenessModule

    best = Path(json.loads((short_fit / "report" / "metrics.json").read_text())["models"][0]["path"])
    checkpoint = torch.load(best, map_location="cpu", weights_only=True)
    module = LivenessModule.load_from_checkpoint(best, map_location="cpu")
    for layer in module.modules():
        if isinstance(layer, torch.nn.modules.batchnorm._BatchNorm):
            layer.reset_running_stats()
            layer.momentum = None  # a plain average over the batches seen
    convention = module.convention
    datamodule = celeba_datamodule(tiny_data, module.class_scheme, convention=InputConvention(convention.input_size))
    datamodule.batch_size = 36
    datamodule.setup()
    module.train()
    with torch.no_grad():
        for batch in datamodule.train_dataloader():
            module(batch["image"])
    checkpoint["state_dict"] = module.state_dict()
    torch.save(checkpoint, folder / "recalibrated.ckpt")


def celeba_datamodule(root: Path, class_scheme, **settings):
    """A `FaceDataModule` over one CelebA-Spoof-layout folder (what `data=celeba_spoof data.root=<root>` builds)."""
    from fas.data.datamodule import FaceDataModule
    from fas.data.sources.celeba_spoof import CelebASpoofSource

    return FaceDataModule({"celeba_spoof": CelebASpoofSource(str(root))}, class_scheme, **settings)


def wandb_records(run_dir: Path, timeout: float = 60.0) -> list:
    """The records of an offline wandb run (`<dir>/wandb/offline-run-*/run-*.wandb`), parsed, once the run's
    `exit` record is there: wandb's writer process may still be flushing the file when `finish()` returns."""
    import time

    from google.protobuf.message import DecodeError

    deadline = time.monotonic() + timeout
    while True:
        try:
            records = read_wandb_file(run_dir)
        except (DecodeError, ValueError):  # a record still being written
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def read_wandb_file(run_dir: Path) -> list:
    """The file is a LevelDB-style log: a 7-byte header, then 32 KiB blocks of chunks, each with a 7-byte
    header (CRC32C, little-endian length, type: 1 full, 2 first, 3 middle, 4 last) holding a
    serialized `wandb_internal_pb2.Record`."""
    import struct

    from wandb.proto import wandb_internal_pb2

    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data, position, pending, records = path.read_bytes(), 7, b"", []
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # too little room left in the block for a header: padding
            position += 32768 - position % 32768
            continue
        length, kind = struct.unpack_from("<HB", data, position + 4)
        pending += data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def compose_train(overrides: list[str], run_dir: Path):
    """Compose `configs/train.yaml` as `python train.py <overrides>` would, with the run in `run_dir`."""
    return compose_config("train", overrides, run_dir)


def compose_config(name: str, overrides: list[str], run_dir: Path):
    """Compose `configs/<name>.yaml` as its Hydra app would, with the run directory in `run_dir`."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.paths.root_dir = str(run_dir)
        cfg.paths.output_dir = str(run_dir)
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
        if "output_dir" in cfg and not any(o.startswith("output_dir=") for o in overrides):
            cfg.output_dir = str(run_dir)  # fas.predict: its output folder is its run folder
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        del cfg.hydra  # kept by HydraConfig; the job config never carries it
    return cfg


PUBLISHED_WEIGHTS = (
    "silentface/2.7_80x80_MiniFASNetV2.pth",
    "silentface/4_0_0_80x80_MiniFASNetV1SE.pth",
    "suri-liveness/best_model.pth",
)


@pytest.fixture(scope="session")
def published_onnx(reference_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The published weight files (by file name) exported to ONNX through `load_backend`, once per session."""
    from fas.export.onnx import export_onnx
    from fas.inference.backends import load_backend

    def build(folder: Path) -> None:
        for relative in PUBLISHED_WEIGHTS:
            backend = load_backend(reference_dir / relative)
            export_onnx(backend.model, backend.info, folder / Path(relative).name.replace(".pth", ".onnx"))

    folder = shared_path(tmp_path_factory, "published_onnx", build)
    return {Path(r).name: folder / Path(r).name.replace(".pth", ".onnx") for r in PUBLISHED_WEIGHTS}


# How `broken_data` breaks samples: (split, index among the split's sorted keys, what is done, reason reported).
BREAKAGES = [
    ("train", 0, "delete _BB.txt", "missing _BB.txt"),
    ("train", 1, "_BB.txt = 'left top width height'", "malformed _BB.txt, non-numeric values"),
    ("train", 2, "_BB.txt = '1 2 3'", "malformed _BB.txt, expected 'x y w h score'"),
    ("train", 3, "_BB.txt = '10 10 0 8 0.9'", "degenerate box x=10.0 y=10.0 w=0.0 h=8.0"),
    ("train", 4, "_BB.txt = '300 10 20 20 0.9'", "lies outside the 224x224 frame"),
    ("train", 5, "_BB.txt = '100 100 0.2 0.2 0.9'", "is under a pixel or outside the"),
    ("train", 6, "truncate image", "truncated image (no end-of-image marker)"),
    ("train", 7, "image = b'not an image'", "cannot decode the image"),
    ("train", 8, "empty image", "empty image file"),
    ("train", 9, "delete image", "image file missing"),
    ("train", 10, "1x1 image", "is under a pixel or outside the 1x1 image"),
    ("test", 0, "truncate image", "truncated image (no end-of-image marker)"),
    ("test", 1, "delete _BB.txt", "missing _BB.txt"),
]


def break_samples(root: Path) -> dict[str, str]:
    """Apply BREAKAGES to a CelebA-Spoof tree; returns {key: reason prepare must report}."""
    import cv2
    import numpy as np

    broken = {}
    for split, index, action, reason in BREAKAGES:
        key = sorted(json.loads((root / f"metas/intra_test/{split}_label.json").read_text()))[index]
        image = root / key
        bb = image.with_name(f"{image.stem}_BB.txt")
        if action == "delete _BB.txt":
            bb.unlink()
        elif action.startswith("_BB.txt = "):
            bb.write_text(action.split(" = ")[1].strip("'"))
        elif action == "truncate image":
            data = image.read_bytes()
            image.write_bytes(data[: int(len(data) * 0.6)])
        elif action == "image = b'not an image'":
            image.write_bytes(b"not an image")
        elif action == "empty image":
            image.write_bytes(b"")
        elif action == "delete image":
            image.unlink()
        elif action == "1x1 image":
            image.write_bytes(cv2.imencode(image.suffix, np.zeros((1, 1, 3), np.uint8))[1].tobytes())
        broken[key] = reason
    return broken


@pytest.fixture(scope="session")
def broken_data(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path) -> tuple[Path, dict[str, str]]:
    """`tiny_data` with one sample broken in each way CelebA-Spoof files break (BREAKAGES)."""

    def build(folder: Path) -> None:
        shutil.copytree(tiny_data, folder / "CelebA_Spoof")
        (folder / "broken.json").write_text(json.dumps(break_samples(folder / "CelebA_Spoof")))

    folder = shared_path(tmp_path_factory, "broken_data", build)
    return folder / "CelebA_Spoof", json.loads((folder / "broken.json").read_text())


PREPARED_CROP_SETTINGS = {"input_size": 64, "crop_scale": 2.7, "crop_mode": "shift", "interpolation": None}


@pytest.fixture(scope="session")
def prepared_cache(tmp_path_factory: pytest.TempPathFactory, broken_data: tuple[Path, dict[str, str]]) -> Path:
    """`python -m fas.data.prepare` run on `broken_data` (64 px shift crops, chunks of 8 samples)."""
    from fas.data.prepare import prepare

    def build(folder: Path) -> None:
        crop = InputConvention(**PREPARED_CROP_SETTINGS)
        prepare(broken_data[0], folder / "cache", crop, workers=2, chunk_size=8, progress=False)

    return shared_path(tmp_path_factory, "prepared", build) / "cache"
