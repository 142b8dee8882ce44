"""Loading untrusted model files: no code runs from a pickle, and every broken file is one line."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fas.download import DownloadError, resolve_model_file
from fas.inference.backends import load_backend
from fas.inference.onnx_file import OnnxFileError
from fas.inference.predictor import LivenessPredictor
from fas.models.checkpoint import CheckpointMismatchError, read_checkpoint
from fas.registry import read_registry

from conftest import REPO_ROOT, TINY_DATA, TINY_RUN, compose_config, compose_train


class RunsCode:
    """What a hostile checkpoint holds: unpickling it calls `os.system`, which creates `marker`."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def hostile_files(folder: Path) -> tuple[dict[str, Path], Path]:
    """The same payload as a zip `.ckpt`, a zip `.pth` and a bare pickle `.pt`; and the marker it would create."""
    folder.mkdir(parents=True, exist_ok=True)
    marker = folder / "marker"
    payload = {"state_dict": {"backbone.conv1.conv.weight": torch.zeros(1)}, "hyper_parameters": RunsCode(marker)}
    files = {"ckpt": folder / "model.ckpt", "pth": folder / "2.7_80x80_MiniFASNetV2.pth", "pickle": folder / "bare.pt"}
    torch.save(payload, files["ckpt"])
    torch.save(payload, files["pth"])
    with files["pickle"].open("wb") as stream:
        pickle.dump({"state_dict": RunsCode(marker)}, stream, protocol=2)  # a bare pickle holds no torch storage
    return files, marker


def test_hostile_pickles_are_refused_by_name_without_running(tmp_path: Path) -> None:
    files, marker = hostile_files(tmp_path)
    for path in files.values():
        with pytest.raises(CheckpointMismatchError) as refused:
            load_backend(path)
        message = str(refused.value)
        assert message.startswith(f"{path}: refused, it asks to load the Python object posix.system"), message
        assert "weights_only=False" not in message and ".ckpt suffix" not in message
    assert not marker.exists()


@pytest.mark.parametrize("kind", ["ckpt", "pth"])
def test_no_entry_point_runs_a_hostile_checkpoint(kind: str, tiny_data: Path, tmp_path: Path) -> None:
    """train.py pretrained= and ckpt_path=, evaluate.py, export.py and predict, run in process as the scripts do."""
    from fas.evaluate import evaluate
    from fas.export.pipeline import export
    from fas.train import train

    files, marker = hostile_files(tmp_path / "files")
    hostile = files[kind]
    data = [*TINY_DATA, f"data.root={tiny_data}"]
    runs = {
        "train pretrained=": lambda: train(
            compose_train([*TINY_RUN, f"data.root={tiny_data}", f"pretrained={hostile}"], tmp_path / "a")
        ),
        "train ckpt_path=": lambda: train(
            compose_train([*TINY_RUN, f"data.root={tiny_data}", f"ckpt_path={hostile}"], tmp_path / "b")
        ),
        "evaluate": lambda: evaluate(compose_config("evaluate", [f"ckpt_path={hostile}", *data], tmp_path / "c")),
        "export": lambda: export(compose_config("export", [f"ckpt_path={hostile}", *data], tmp_path / "d")),
        "predict": lambda: LivenessPredictor.from_files([hostile]),
    }
    for entry_point, run in runs.items():
        with pytest.raises(CheckpointMismatchError, match=r"refused, it asks to load the Python object posix\.system"):
            run()
        assert not marker.exists(), entry_point


def test_fas_checkpoints_hold_only_plain_values(short_fit: Path) -> None:
    """What fas writes loads with torch's weights-only unpickler and no extra allowed types."""
    for path in (short_fit / "checkpoints").glob("*.ckpt"):
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
        assert {"state_dict", "hyper_parameters", "optimizer_states", "fas_threshold"} <= set(checkpoint)
        assert load_backend(path).info.convention.input_size == 64


def broken_files(folder: Path, short_fit: Path) -> dict[str, tuple[Path, str]]:
    """Broken model files and the gist of the line each must give."""
    folder.mkdir(parents=True, exist_ok=True)
    checkpoint = (short_fit / "checkpoints" / "last.ckpt").read_bytes()
    files = {
        "truncated.ckpt": (
            checkpoint[: len(checkpoint) // 2],
            "not a PyTorch checkpoint, or a truncated or corrupt one",
        ),
        "empty.ckpt": (b"", "not a PyTorch checkpoint, or a truncated or corrupt one"),
        "random.pth": (np.random.default_rng(0).bytes(4096), "not a PyTorch checkpoint, or a truncated or corrupt one"),
        "text.onnx": (b"this is not a model\n" * 20, "not an ONNX model, or a truncated or corrupt one"),
        "empty.onnx": (b"", "not an ONNX model (no graph)"),
    }
    written = {}
    for name, (data, gist) in files.items():
        (folder / name).write_bytes(data)
        written[name] = (folder / name, gist)
    return written


def test_broken_model_files_are_one_clear_error(short_fit: Path, tmp_path: Path) -> None:
    for name, (path, gist) in broken_files(tmp_path, short_fit).items():
        with pytest.raises((CheckpointMismatchError, OnnxFileError)) as refused:
            load_backend(path)
        assert str(refused.value).startswith(f"{path}: {gist}"), (name, str(refused.value))
        assert "\n" not in str(refused.value)


def test_a_checkpoint_that_is_not_a_dict_is_refused(tmp_path: Path) -> None:
    torch.save([torch.zeros(2)], tmp_path / "list.pth")
    with pytest.raises(CheckpointMismatchError, match=r"list.pth: holds a list, not a dict of weights"):
        read_checkpoint(tmp_path / "list.pth")


def test_onnx_with_external_data_is_refused(tmp_path: Path) -> None:
    """An initializer that points at a file elsewhere (here /etc/hostname) is not followed."""
    import onnx
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    weight.external_data.add(key="location", value="../../../../etc/hostname")
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [weight],
    )
    onnx.save_model(helper.make_model(graph), tmp_path / "m.onnx")
    with pytest.raises(OnnxFileError, match=r"m.onnx: keeps 1 tensor\(s\) in external data files \(e.g. w\)"):
        load_backend(tmp_path / "m.onnx")


def one_error_line(result: subprocess.CompletedProcess) -> str:
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(lines) == 1, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    return lines[0]


def test_scripts_print_one_line_for_hostile_and_broken_files(
    short_fit: Path, tiny_data: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """The real commands: export.py on a hostile .ckpt, evaluate.py on a cut .ckpt, predict on a non-ONNX file."""
    files, marker = hostile_files(tmp_path / "hostile")
    broken = broken_files(tmp_path / "broken", short_fit)
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    image = reference_dir / "images/image_T1.jpg"
    commands = {
        "export.py": ([str(REPO_ROOT / "export.py"), f"ckpt_path={files['ckpt']}"], "refused, it asks to load"),
        "evaluate.py": (
            [
                str(REPO_ROOT / "evaluate.py"),
                f"ckpt_path={broken['truncated.ckpt'][0]}",
                *TINY_DATA,
                f"data.root={tiny_data}",
            ],
            "not a PyTorch checkpoint, or a truncated or corrupt one",
        ),
        "predict": (
            [
                "-m",
                "fas.predict",
                f"input={image}",
                f"detector.model_path={yunet}",
                f"liveness.models=[{broken['text.onnx'][0]}]",
                "liveness.threshold=0.5",
            ],
            "not an ONNX model, or a truncated or corrupt one",
        ),
    }
    for name, (arguments, gist) in commands.items():
        result = subprocess.run(
            [sys.executable, *arguments, f"hydra.run.dir={tmp_path / name}"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert gist in one_error_line(result), name
    assert not marker.exists()


def test_registry_names_check_the_cached_file(tmp_path: Path, reference_dir: Path, monkeypatch) -> None:
    """`liveness=silentface_v2` or `pretrained=silentface-v2-2.7` read the cache: a modified file there is refused."""
    monkeypatch.setenv("FAS_CACHE_DIR", str(tmp_path))
    entry = read_registry()["silentface-v2-2.7"]
    cached = tmp_path / entry.file
    cached.write_bytes((reference_dir / "silentface" / entry.file).read_bytes())
    assert resolve_model_file("silentface-v2-2.7") == cached
    data = cached.read_bytes()
    cached.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # one bit changed
    with pytest.raises(
        DownloadError,
        match=r"sha256 .* is not the registered .* download it again: python -m fas.download silentface-v2-2.7",
    ):
        LivenessPredictor.from_files(["silentface-v2-2.7"])
    assert not cached.exists()
