"""One input convention from training to serving: the crop a training cache stores is the crop
`fas.predict` feeds the model, byte for byte, for every published convention and a non-default
resampling; checkpoints and exports record the convention whole, older checkpoints included."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.data.cache import read_cached_split
from fas.data.datasets import PackedCropDataset
from fas.data.prepare import prepare
from fas.data.sample import with_targets
from fas.data.sources.folder import FolderSource
from fas.errors import ConfigError
from fas.inference.backends import TorchBackend
from fas.inference.onnx_file import read_metadata, write_metadata
from fas.inference.preprocess import face_batch
from fas.media import read_image
from fas.models.checkpoint import CheckpointMismatchError
from fas.module import LivenessModule
from fas.registry import published_convention

BINARY = ClassScheme("binary", ("live", "spoof"), 0, {0: 0, 1: 1})
CONVENTIONS = {
    **{name: published_convention(name) for name in ("silentface_2.7", "silentface_4.0", "suri_liveness", "hairymax")},
    "default, area": InputConvention(interpolation="area"),
    "suri_liveness, area": published_convention("suri_liveness", interpolation="area"),
}
BOXES = {"a": (120, 70, 90, 110), "b": (10, 150, 70, 80)}  # one inside the frame, one at its edge


def photo(seed: int) -> np.ndarray:
    """A 240x320 photo-like image: smooth shapes and fine texture, so any resampling difference shows."""
    rng = np.random.default_rng(seed)
    image = cv2.GaussianBlur(rng.integers(0, 256, (240, 320, 3)).astype(np.uint8), (0, 0), 3)
    return cv2.add(image, rng.integers(0, 40, image.shape).astype(np.uint8))


@pytest.fixture(scope="module")
def boxed_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder tree whose photos carry their face box (`_BB.txt`), as a user's data may."""
    root = tmp_path_factory.mktemp("boxed")
    for split, subject in (("train", "p1"), ("test", "p2")):
        folder = root / split / "live" / subject
        folder.mkdir(parents=True)
        for index, (name, box) in enumerate(BOXES.items()):
            cv2.imwrite(str(folder / f"{name}.jpg"), photo(index + len(split)), [cv2.IMWRITE_JPEG_QUALITY, 92])
            (folder / f"{name}_BB.txt").write_text(" ".join(map(str, box)))
    return root


@pytest.mark.parametrize("name", sorted(CONVENTIONS))
def test_the_training_cache_and_predict_feed_the_same_pixels(name: str, boxed_tree: Path, tmp_path: Path) -> None:
    convention = CONVENTIONS[name]
    cache = tmp_path / "cache"
    prepare(FolderSource(str(boxed_tree)), cache, convention, workers=1, progress=False)
    samples = with_targets(read_cached_split(cache, "train", "folder"), BINARY, "train")
    trained_on = PackedCropDataset(cache, samples, convention)
    assert len(trained_on) == len(BOXES)
    for index, sample in enumerate(samples):
        served = face_batch(read_image(sample.path), [BOXES[sample.path.stem]], convention)[0]
        learned = trained_on[index]["image"].numpy()
        assert learned.tobytes() == served.tobytes(), (name, sample.key)


def test_the_interpolation_changes_the_pixels(boxed_tree: Path) -> None:
    """The skew the convention closes: the same crop at another resampling gives other pixels."""
    image = read_image(boxed_tree / "train/live/p1/a.jpg")
    own = face_batch(image, [BOXES["a"]], published_convention("suri_liveness"))
    area = face_batch(image, [BOXES["a"]], published_convention("suri_liveness", interpolation="lanczos"))
    assert np.abs(own - area).max() > 0.01


def lightning_checkpoint(convention: dict, path: Path) -> Path:
    module = LivenessModule("minifasnet_v2", InputConvention(input_size=64).to_dict(), BINARY.to_dict())
    hyper_parameters = {**dict(module.hparams), "convention": convention}
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hyper_parameters}, path)
    return path


def test_a_checkpoint_from_before_interpolation_existed_loads_with_the_rules_own(tmp_path: Path) -> None:
    old = InputConvention(input_size=64).to_dict()
    del old["interpolation"]
    backend = TorchBackend.from_lightning_checkpoint(lightning_checkpoint(old, tmp_path / "old.ckpt"))
    assert backend.info.convention == InputConvention(input_size=64)
    area = {**old, "interpolation": "area"}
    backend = TorchBackend.from_lightning_checkpoint(lightning_checkpoint(area, tmp_path / "area.ckpt"))
    assert backend.info.convention.interpolation == "area"
    foreign = {**old, "sharpen": 2}
    with pytest.raises(CheckpointMismatchError, match=r"foreign.ckpt: not a fas Lightning checkpoint \(.*sharpen"):
        TorchBackend.from_lightning_checkpoint(lightning_checkpoint(foreign, tmp_path / "foreign.ckpt"))


def test_exports_record_the_whole_convention(tmp_path: Path) -> None:
    info = ModelInfo(published_convention("suri_liveness", interpolation="cubic"), BINARY, "minifasnet_v2se")
    proto = onnx.ModelProto()
    write_metadata(proto, info)
    assert json.loads({p.key: p.value for p in proto.metadata_props}["fas.convention"])["interpolation"] == "cubic"
    proto.graph.node.add(op_type="Identity")
    proto.graph.input.add(name="input")
    assert read_metadata(proto).convention == info.convention


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"interpolation": "bicubic"}, "interpolation must be one of nearest, linear, cubic, area, lanczos or null"),
        ({"input_size": 12}, "input_size must be at least 16 pixels"),
        ({"input_size": 80.5}, "input_size must be a whole number of pixels"),
        ({"crop_mode": "zoom"}, "crop_mode must be one of shift, reflect, pad, none"),
        ({"std": (1.0, 0.0, 1.0)}, "std non-zero"),
    ],
)
def test_an_impossible_convention_is_a_config_error(fields: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        InputConvention(**fields)
