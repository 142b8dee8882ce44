from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml

from fas.convention import ClassScheme, InputConvention
from fas.errors import ModelFileError
from fas.inference.backends import OnnxBackend, TorchBackend, load_backend
from fas.inference.onnx_file import read_metadata
from fas.inference.preprocess import face_batch
from fas.models import build_backbone
from fas.models.checkpoint import CheckpointMismatchError
from fas.models.pretrained import SilentFaceName, convention_differences, load_pretrained, parse_silentface_name
from fas.registry import class_scheme, published_convention

from conftest import CONFIG_DIR

SILENTFACE_SCHEME, SURI_SCHEME = class_scheme("silentface3"), class_scheme("binary")


def suri_convention(size: int) -> InputConvention:
    return published_convention("suri_liveness", input_size=size)


SILENTFACE_FILES = ("2.7_80x80_MiniFASNetV2.pth", "4_0_0_80x80_MiniFASNetV1SE.pth")


def softmax(logits: np.ndarray) -> np.ndarray:
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("2.7_80x80_MiniFASNetV2.pth", SilentFaceName(2.7, 80, 80, "MiniFASNetV2")),
        ("4_0_0_80x80_MiniFASNetV1SE.pth", SilentFaceName(4.0, 80, 80, "MiniFASNetV1SE")),
        ("org_1_80x80_MiniFASNetV2SE.pth", SilentFaceName(None, 80, 80, "MiniFASNetV2SE")),
    ],
)
def test_silentface_names_are_parsed(name: str, expected: SilentFaceName) -> None:
    assert parse_silentface_name(Path("/some/dir") / name) == expected


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("model.pth", "its name does not say the crop"),
        ("2.7_0.1_0_80x80_MiniFASNetV2.pth", "shifted crops"),
        ("org_1_80x60_MobileFaceNetPv1.pth", "architecture MobileFaceNetPv1 is not one of MiniFASNetV1"),
        ("2.7_80x60_MiniFASNetV2.pth", "non-square input 80x60"),
    ],
)
def test_bad_silentface_names_say_the_expected_pattern(name: str, problem: str) -> None:
    with pytest.raises(CheckpointMismatchError, match=problem) as caught:
        parse_silentface_name(name)
    assert "2.7_80x80_MiniFASNetV2.pth" in str(caught.value)


def test_imported_schemes_equal_the_config_schemes() -> None:
    for scheme, file in ((SILENTFACE_SCHEME, "silentface3"), (SURI_SCHEME, "binary")):
        values = yaml.safe_load((CONFIG_DIR / "class_scheme" / f"{file}.yaml").read_text())
        values.pop("_target_")
        assert scheme == ClassScheme(**values)


def test_silentface_logits_match_the_original(reference_dir: Path) -> None:
    expected = json.loads((reference_dir / "expected/silentface.json").read_text())
    backends = {name: load_backend(reference_dir / "silentface" / name) for name in SILENTFACE_FILES}
    assert backends[SILENTFACE_FILES[0]].info.convention == InputConvention(
        input_size=80, color_order="bgr", pixel_scale=1.0, crop_scale=2.7, crop_mode="shift"
    )
    assert backends[SILENTFACE_FILES[1]].info.convention.crop_scale == 4.0
    for image_name, record in expected["images"].items():
        image = cv2.imread(str(reference_dir / "images" / image_name))
        probabilities = []
        for name, backend in backends.items():
            assert isinstance(backend, TorchBackend) and backend.info.class_scheme == SILENTFACE_SCHEME
            logits = backend.logits(face_batch(image, [record["bbox_xywh"]], backend.info.convention))[0]
            np.testing.assert_allclose(logits, record["models"][name]["logits"], atol=1e-4, rtol=0)
            probabilities.append(softmax(logits))
        fused = np.mean(probabilities, axis=0)
        np.testing.assert_allclose(fused, record["fused_mean_softmax"], atol=1e-5)
        assert fused.argmax() == record["label"]


def test_suri_logits_match_the_original(reference_dir: Path) -> None:
    expected = json.loads((reference_dir / "expected/suri_liveness.json").read_text())
    backend = load_backend(reference_dir / "suri-liveness/best_model.pth")
    assert backend.info.convention == suri_convention(128) and backend.info.class_scheme == SURI_SCHEME
    assert backend.info.backbone == "minifasnet_v2se"
    for image_name, record in expected["images"].items():
        image = cv2.imread(str(reference_dir / "images" / image_name))
        for face in record["faces"]:
            logits = backend.logits(face_batch(image, [face["bbox_xywh"]], backend.info.convention))[0]
            np.testing.assert_allclose(logits, face["logits"]["best_model_97.80.onnx"], atol=1e-4, rtol=0)


def test_onnx_exports_keep_the_convention_and_the_logits(reference_dir: Path, published_onnx: dict[str, Path]) -> None:
    silentface = json.loads((reference_dir / "expected/silentface.json").read_text())["images"]
    suri = json.loads((reference_dir / "expected/suri_liveness.json").read_text())["images"]
    for name, onnx_path in published_onnx.items():
        backend = load_backend(onnx_path)
        assert isinstance(backend, OnnxBackend)
        source = reference_dir / ("silentface" if name in SILENTFACE_FILES else "suri-liveness") / name
        assert read_metadata(onnx_path) == load_backend(source).info  # a drop-in replacement
        for image_name in silentface:
            image = cv2.imread(str(reference_dir / "images" / image_name))
            if name in SILENTFACE_FILES:
                box, recorded = silentface[image_name]["bbox_xywh"], silentface[image_name]["models"][name]["logits"]
            else:
                face = suri[image_name]["faces"][0]
                box, recorded = face["bbox_xywh"], face["logits"]["best_model_97.80.onnx"]
            logits = backend.logits(face_batch(image, [box], backend.info.convention))[0]
            np.testing.assert_allclose(logits, recorded, atol=1e-3, rtol=0)


def test_suri_released_file_with_fourier_head_keys(reference_dir: Path, tmp_path: Path) -> None:
    checkpoint = torch.load(reference_dir / "suri-liveness/best_model.pth", weights_only=True)
    checkpoint["model_state_dict"]["model.FTGenerator.ft.0.weight"] = torch.zeros(128, 128, 3, 3)
    path = tmp_path / "epoch_31.pth"
    torch.save(checkpoint, path)
    batch = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    published = load_backend(reference_dir / "suri-liveness/best_model.pth")
    np.testing.assert_array_equal(load_backend(path).logits(batch), published.logits(batch))


def test_renamed_silentface_file_needs_its_name_or_a_convention(reference_dir: Path, tmp_path: Path) -> None:
    renamed = tmp_path / "liveness.pth"
    shutil.copy(reference_dir / "silentface" / SILENTFACE_FILES[0], renamed)
    with pytest.raises(CheckpointMismatchError) as refused:
        load_backend(renamed)
    assert str(refused.value) == (
        f"{renamed}: minifasnet_v2 weights (80x80, 3 classes) whose input convention the file does not record; "
        "name it with convention=<silentface_2.7|silentface_4.0|suri_liveness|hairymax> (a Silent-Face file may "
        "instead keep its published name <scale>_<H>x<W>_<Type>.pth (e.g. 2.7_80x80_MiniFASNetV2.pth))"
    )
    named = load_backend(renamed, convention="silentface_2.7")
    assert named.info.convention == load_backend(reference_dir / "silentface" / SILENTFACE_FILES[0]).info.convention


def test_plain_state_dicts_as_uniface_ships_them(reference_dir: Path, tmp_path: Path) -> None:
    """No prefix, no crop in the name: with convention=silentface_2.7 the logits are the original's."""
    expected = json.loads((reference_dir / "expected/silentface.json").read_text())["images"]
    state = torch.load(reference_dir / "silentface" / SILENTFACE_FILES[0], map_location="cpu", weights_only=True)
    plain = tmp_path / "MiniFASNetV2.pth"
    torch.save({key.removeprefix("module."): value for key, value in state.items()}, plain)
    backend = load_backend(plain, convention="silentface_2.7")
    assert backend.info.class_scheme == SILENTFACE_SCHEME and backend.info.config["source"] == "silentface_2.7"
    for image_name, record in expected.items():
        image = cv2.imread(str(reference_dir / "images" / image_name))
        logits = backend.logits(face_batch(image, [record["bbox_xywh"]], backend.info.convention))[0]
        np.testing.assert_allclose(logits, record["models"][SILENTFACE_FILES[0]]["logits"], atol=1e-4, rtol=0)
    with pytest.raises(ModelFileError, match=r"has 3 classes, but suri-liveness models \(convention=suri"):
        load_backend(plain, convention="suri_liveness")


def suri_training_layout(released: dict) -> dict:
    """suri-liveness's released file in the layout its training scripts write (`logits`, `config`, FTGenerator)."""
    state = {key.replace("model.prob.", "model.logits."): value for key, value in released["model_state_dict"].items()}
    state["FTGenerator.fourier_transform.0.weight"] = torch.zeros(128, 128, 3, 3)
    state["FTGenerator.fourier_transform.1.running_mean"] = torch.zeros(128)
    return {
        "model_state_dict": state,
        "validation_accuracy": 97.8,
        "config": {"input_size": 128, "num_classes": 2, "ft_weight": 0.5},
    }


def test_suri_training_checkpoint_layout(reference_dir: Path, tmp_path: Path) -> None:
    released = torch.load(reference_dir / "suri-liveness/best_model.pth", map_location="cpu", weights_only=True)
    path = tmp_path / "epoch_31.pth"
    torch.save(suri_training_layout(released), path)
    backend, published = load_backend(path), load_backend(reference_dir / "suri-liveness/best_model.pth")
    assert backend.info.convention == published.info.convention and backend.info.class_scheme == SURI_SCHEME
    assert backend.info.backbone == "minifasnet_v2se"
    batch = np.random.default_rng(0).random((2, 3, 128, 128), dtype=np.float32)
    np.testing.assert_array_equal(backend.logits(batch), published.logits(batch))


@pytest.mark.parametrize(
    ("classes", "names"), [("bin", ("live", "spoof")), ("print-replay", ("live", "print", "replay"))]
)
def test_hairymax_checkpoint_layout(classes: str, names: tuple[str, ...], tmp_path: Path) -> None:
    """DataParallel MultiFTNet keys (`module.model.*`, `module.FTGenerator.*`), the crop in the file name."""
    model = build_backbone("minifasnet_v2se", input_size=128, num_classes=len(names)).eval()
    state = {f"module.model.{key}": value for key, value in model.state_dict().items()}
    state["module.FTGenerator.ft.0.weight"] = torch.zeros(128, 128, 3, 3)
    path = tmp_path / f"AntiSpoofing_{classes}_1.5_128.pth"
    torch.save(state, path)
    backend = load_backend(path)
    assert backend.info.convention == InputConvention(
        input_size=128, color_order="rgb", pixel_scale=1 / 255, crop_scale=1.5, crop_mode="pad"
    )
    assert backend.info.class_scheme.class_names == names and backend.info.class_scheme.real_class_index == 0
    batch = np.random.default_rng(1).random((2, 3, 128, 128), dtype=np.float32)
    with torch.no_grad():
        np.testing.assert_allclose(backend.logits(batch), model(torch.from_numpy(batch)).numpy(), atol=1e-6, rtol=0)


def test_unknown_layouts_name_the_known_ones_and_the_keys_found(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"fc.weight": torch.zeros(2, 3), "layer1.0.conv1.weight": torch.zeros(1)}, path)
    with pytest.raises(CheckpointMismatchError) as refused:
        load_backend(path)
    message = str(refused.value)
    assert message.startswith(f"{path}: not a checkpoint fas knows (keys fc.weight, layer1.0.conv1.weight, ...)")
    assert "suri-liveness's best_model.pth or training checkpoint" in message and "hairymax" in message


@pytest.mark.parametrize("file", ["best_model.onnx", "best_model_quantized.onnx"])
def test_suri_liveness_own_onnx_files_with_a_named_convention(reference_dir: Path, file: str) -> None:
    """Peers' ONNX files carry no fas metadata: `convention=suri_liveness` makes them usable side by side."""
    expected = json.loads((reference_dir / "expected/suri_liveness.json").read_text())["images"]
    backend = load_backend(reference_dir / "suri-liveness" / file, convention="suri_liveness")
    assert backend.info.convention == suri_convention(128) and backend.info.class_scheme == SURI_SCHEME
    recorded_name = file.replace(".onnx", "_97.80.onnx")
    for image_name, record in expected.items():
        image = cv2.imread(str(reference_dir / "images" / image_name))
        for face in record["faces"]:
            logits = backend.logits(face_batch(image, [face["bbox_xywh"]], backend.info.convention))[0]
            np.testing.assert_allclose(logits, face["logits"][recorded_name], atol=1e-3, rtol=0)


def test_silentface_org_file_crops_nothing(tmp_path: Path) -> None:
    model = build_backbone("minifasnet_v2", input_size=80, num_classes=3)
    path = tmp_path / "org_1_80x80_MiniFASNetV2.pth"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    backend = load_backend(path)
    assert backend.info.convention.crop_mode == "none" and backend.info.convention.color_order == "bgr"


def test_weights_files_are_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "weights.pth"
    torch.save({"model_state_dict": {}, "architecture": "MiniFASNetV2", "callback": logging.getLogger}, path)
    with pytest.raises(CheckpointMismatchError, match=r"refused, it asks to load the Python object logging\.getLogger"):
        load_backend(path)


def test_fine_tuning_to_another_class_count(reference_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = reference_dir / "suri-liveness/best_model.pth"
    model = build_backbone("minifasnet_v2se", input_size=128, num_classes=3)
    with pytest.raises(CheckpointMismatchError, match="pretrained_reinit_classifier=true"):
        load_pretrained(model, path, "minifasnet_v2se", suri_convention(128))
    fresh = model.prob.weight.detach().clone()
    bgr = InputConvention(input_size=128, color_order="bgr", pixel_scale=1.0, crop_scale=1.5, crop_mode="reflect")
    with caplog.at_level(logging.INFO):
        load_pretrained(model, path, "minifasnet_v2se", bgr, reinit_classifier=True)
    published = load_backend(path).model
    assert torch.equal(model.conv1.conv.weight, published.conv1.conv.weight)
    assert torch.equal(model.prob.weight, fresh)
    assert "classifier re-initialised" in caplog.text
    assert "color_order: rgb -> bgr; pixel_scale: 0.00392156862745098 -> 1.0" in caplog.text


def test_convention_differences_name_each_field() -> None:
    assert convention_differences(suri_convention(128), suri_convention(128)) == []
    assert convention_differences(suri_convention(128), suri_convention(80)) == ["input_size: 128 -> 80"]
