"""evaluate.py end to end: a trained checkpoint and its ONNX export give the same report; bad input fails clearly."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import hydra
import lightning as L
import onnx
import pytest
import torch

from fas.convention import ClassScheme, InputConvention, ModelInfo
from fas.data.datamodule import FaceDataModule, datamodule_for
from fas.errors import ConfigError
from fas.evaluate import ModelInputError, evaluate
from fas.export.onnx import export_onnx
from fas.inference.backends import TorchBackend
from fas.inference.onnx_file import read_metadata, write_metadata
from fas.metrics import METRIC_KEYS
from fas.module import LivenessModule

from conftest import REPO_ROOT, celeba_datamodule, compose_config

TINY = ["data=celeba_spoof", "data.num_workers=0", "data.eval_batch_size=16"]


@pytest.fixture(scope="module")
def trained(ranked_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The short run's checkpoint with re-estimated BatchNorm statistics, and its ONNX export."""
    backend = TorchBackend.from_lightning_checkpoint(ranked_checkpoint)
    onnx_path = export_onnx(backend.model, backend.info, tmp_path_factory.mktemp("models") / "model.onnx")
    return {"ckpt": ranked_checkpoint, "onnx": onnx_path}


def data_module(root: Path, module: LivenessModule, batch_size: int = 8) -> FaceDataModule:
    convention = module.convention
    datamodule = celeba_datamodule(
        root, module.class_scheme, convention=convention, batch_size=batch_size, eval_batch_size=16
    )
    datamodule.setup()
    return datamodule


def run_cli(*overrides: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(REPO_ROOT / "evaluate.py"), *overrides],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_checkpoint_and_onnx_export_give_the_same_report(trained: dict[str, Path], tiny_data: Path, tmp_path: Path):
    result = run_cli(
        f"ckpt_path=[{trained['ckpt']},{trained['onnx']}]",
        *TINY,
        f"data.root={tiny_data}",
        f"hydra.run.dir={tmp_path / 'run'}",
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report_dir = tmp_path / "run" / "report"
    assert all((report_dir / name).is_file() for name in ("metrics.json", "report.md", "report.html"))
    payload = json.loads((report_dir / "metrics.json").read_text())
    ckpt, onnx = payload["models"]
    assert (ckpt["name"], onnx["name"]) == (trained["ckpt"].name, "model.onnx")
    assert ckpt["counts"] == onnx["counts"] and sum(ckpt["counts"].values()) > 10
    assert ckpt["convention"]["input_size"] == 64  # the model's recorded convention, not the data config's 80
    assert ckpt["metrics"]["auroc"] == pytest.approx(onnx["metrics"]["auroc"], abs=1e-6)
    for key in METRIC_KEYS:
        assert ckpt["metrics"][key] == pytest.approx(onnx["metrics"][key], abs=1e-5), key
    assert ckpt["apcer_per_type"] == pytest.approx(onnx["apcer_per_type"])
    table = (report_dir / "report.md").read_text()
    assert f"| {trained['ckpt'].name} |" in table and "| model.onnx |" in table


def test_training_test_step_and_evaluate_agree(trained: dict[str, Path], tiny_data: Path, tmp_path: Path) -> None:
    """The LightningModule's validation (EER threshold) and test steps report what evaluate.py reports."""
    module = LivenessModule.load_from_checkpoint(trained["ckpt"], map_location="cpu", weights_only=False)
    trainer = L.Trainer(logger=False, enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path)
    datamodule = data_module(tiny_data, module)
    trainer.validate(module, datamodule=datamodule)
    trainer.test(module, datamodule=datamodule)
    _, from_training, _ = module.test_evaluation
    overrides = [f"ckpt_path={trained['ckpt']}", *TINY, f"data.root={tiny_data}", "threshold.rule=eer"]
    (from_evaluate,) = json.loads(evaluate(compose_evaluate(overrides, tmp_path)).metrics.read_text())["models"]
    assert module.threshold.value == pytest.approx(from_evaluate["threshold_choice"]["value"], rel=1e-6)
    for key in METRIC_KEYS:
        assert from_training.metrics[key] == pytest.approx(from_evaluate["metrics"][key], abs=1e-6), key
    assert from_training.apcer_per_type == pytest.approx(from_evaluate["apcer_per_type"])


def test_the_checkpoint_records_its_validation_threshold(short_fit: Path) -> None:
    (model,) = json.loads((short_fit / "report" / "metrics.json").read_text())["models"]
    recorded = torch.load(model["path"], map_location="cpu", weights_only=False)["fas_threshold"]
    assert recorded["rule"] == "eer" and recorded["split"] == "val"
    assert model["threshold_choice"] == recorded  # the test step applied the best epoch's threshold unchanged


def test_missing_model_file_is_one_line(tmp_path: Path, tiny_data: Path) -> None:
    result = run_cli("ckpt_path=nowhere/model.onnx", *TINY, f"data.root={tiny_data}", cwd=tmp_path)
    lines = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and lines == ["error: nowhere/model.onnx: model file not found; check the path"]
    assert "Traceback" not in result.stderr


def compose_evaluate(overrides: list[str], run_dir: Path):
    return compose_config("evaluate", overrides, run_dir)


def test_missing_ckpt_path(tmp_path: Path, tiny_data: Path) -> None:
    with pytest.raises(ConfigError, match=r"ckpt_path is not set: pass ckpt_path="):
        evaluate(compose_evaluate([*TINY, f"data.root={tiny_data}"], tmp_path))


def test_onnx_whose_graph_disagrees_with_its_metadata_is_refused(
    trained: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    proto = onnx.load(str(trained["onnx"]))
    info = read_metadata(proto)
    write_metadata(proto, replace(info, convention=replace(info.convention, input_size=80)))
    onnx.save(proto, str(tmp_path / "relabelled.onnx"))
    cfg = compose_evaluate([f"ckpt_path={tmp_path / 'relabelled.onnx'}", *TINY, f"data.root={tiny_data}"], tmp_path)
    with pytest.raises(ModelInputError, match=r"relabelled.onnx rejects the 80x80 input its recorded convention"):
        evaluate(cfg)


@pytest.fixture
def live_only_data(tiny_data: Path, tmp_path: Path) -> Path:
    """The tiny dataset with every spoof sample removed from its label files."""
    root = tmp_path / "live_only"
    (root / "metas" / "intra_test").mkdir(parents=True)
    (root / "Data").symlink_to(tiny_data / "Data")
    for split in ("train", "test"):
        labels = json.loads((tiny_data / "metas" / "intra_test" / f"{split}_label.json").read_text())
        live = {key: vector for key, vector in labels.items() if vector[43] == 0}
        (root / "metas" / "intra_test" / f"{split}_label.json").write_text(json.dumps(live))
    return root


def test_dataset_without_spoofs_reports_undefined_metrics(
    trained: dict[str, Path], live_only_data: Path, tmp_path: Path
) -> None:
    overrides = [
        f"ckpt_path={trained['ckpt']}",
        *TINY,
        f"data.root={live_only_data}",
        "logger=csv",
        "threshold.rule=eer",
    ]
    cfg = compose_evaluate(overrides, tmp_path)
    with pytest.warns(UserWarning, match=r"Cannot choose the decision threshold: the val split has no attack"):
        files = evaluate(cfg)
    (model,) = json.loads(files.metrics.read_text())["models"]
    assert model["counts"]["spoof"] == 0 and model["counts"]["live"] > 0
    assert model["metrics"]["auroc"] is None and model["undefined"]["auroc"] == "no attack (spoof) samples"
    assert model["threshold_choice"]["value"] is None and "threshold.rule=fixed" in model["threshold_choice"]["reason"]
    assert "undefined" in files.markdown.read_text()

    fixed = compose_evaluate(
        [
            f"ckpt_path={trained['ckpt']}",
            *TINY,
            f"data.root={live_only_data}",
            "threshold.rule=fixed",
            "threshold.value=0.5",
            "logger=csv",
        ],
        tmp_path / "fixed",
    )
    with pytest.warns(UserWarning, match=r"auroc.* undefined \(no attack \(spoof\) samples\)"):
        files = evaluate(fixed)
    (model,) = json.loads(files.metrics.read_text())["models"]
    assert model["metrics"]["threshold"] == 0.5 and model["threshold_choice"]["rule"] == "fixed"
    assert 0.0 <= model["metrics"]["bpcer"] <= 1.0 and model["metrics"]["apcer"] is None
    # The scalars also went to the configured logger.
    (metrics_csv,) = (tmp_path / "fixed").rglob("metrics.csv")
    row = next(csv.DictReader(metrics_csv.open()))
    assert float(row["test/bpcer"]) == pytest.approx(model["metrics"]["bpcer"])


SILENTFACE3 = ClassScheme("silentface3", ("print", "live", "replay"), 1, {0: 1, 1: 0, 2: 0, 3: 0, 7: 2, 8: 2, 9: 2})


def test_data_follows_the_models_recorded_convention(tiny_data: Path, tmp_path: Path) -> None:
    convention = InputConvention(input_size=80, color_order="bgr", pixel_scale=1.0, crop_scale=4.0)
    info = ModelInfo(convention, SILENTFACE3, "minifasnet_v1se")
    base = ["ckpt_path=unused.onnx", *TINY, f"data.root={tiny_data}"]
    cfg = compose_evaluate(base, tmp_path)
    datamodule = datamodule_for(cfg.data, info)
    assert datamodule.convention == info.convention
    assert datamodule.class_scheme == SILENTFACE3
    cfg = compose_evaluate([*base, "class_scheme=binary_all"], tmp_path)
    chosen = hydra.utils.instantiate(cfg.class_scheme)
    assert datamodule_for(cfg.data, info, class_scheme=chosen).class_scheme.name == "binary_all"


def test_published_weights_are_evaluated_side_by_side(reference_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    """`evaluate.py` takes the published `.pth` files as they are, each with its own crop and classes."""
    from conftest import PUBLISHED_WEIGHTS

    models = ",".join(str(reference_dir / relative) for relative in PUBLISHED_WEIGHTS)
    cfg = compose_evaluate([f"ckpt_path=[{models}]", *TINY, f"data.root={tiny_data}", "class_scheme=binary"], tmp_path)
    reported = json.loads(evaluate(cfg).metrics.read_text())["models"]
    assert [m["name"] for m in reported] == [Path(r).name for r in PUBLISHED_WEIGHTS]
    assert [m["convention"]["crop_scale"] for m in reported] == [2.7, 4.0, 1.5]
    assert all(0.0 <= m["metrics"]["auroc"] <= 1.0 for m in reported)


def test_peers_onnx_files_are_evaluated_with_a_named_convention(
    reference_dir: Path, tiny_data: Path, tmp_path: Path
) -> None:
    """suri-liveness's own ONNX files carry no fas metadata; `convention=suri_liveness` scores them beside its .pth,
    which records its convention itself (and keeps it)."""
    suri = reference_dir / "suri-liveness"
    models = f"[{suri / 'best_model.pth'},{suri / 'best_model.onnx'},{suri / 'best_model_quantized.onnx'}]"
    overrides = [f"ckpt_path={models}", "convention=suri_liveness", *TINY, f"data.root={tiny_data}"]
    reported = json.loads(evaluate(compose_evaluate(overrides, tmp_path)).metrics.read_text())["models"]
    assert [m["name"] for m in reported] == ["best_model.pth", "best_model.onnx", "best_model_quantized.onnx"]
    assert len({json.dumps(m["convention"], sort_keys=True) for m in reported}) == 1
    assert reported[1]["metrics"]["auroc"] == pytest.approx(reported[0]["metrics"]["auroc"], abs=1e-6)
    assert abs(reported[2]["metrics"]["auroc"] - reported[0]["metrics"]["auroc"]) < 0.05  # their dynamic INT8


def test_a_checkpoint_its_onnx_and_a_published_file_on_your_own_folder(
    trained: dict[str, Path], tiny_folder: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """Cross-dataset evaluation on a folder tree (its test/ part): each model cropped by its own convention,
    the threshold from the folder's val part (held out by subject from train/), the report naming the source."""
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    suri = reference_dir / "suri-liveness/best_model.pth"
    overrides = [
        f"ckpt_path=[{trained['ckpt']},{trained['onnx']},{suri}]",
        "data=folder",
        f"data.root={tiny_folder}",
        "data.num_workers=0",
        f"detector.model_path={yunet}",
        f"paths.data_dir={tmp_path / 'data'}",
    ]
    files = evaluate(compose_evaluate(overrides, tmp_path))
    report = json.loads(files.metrics.read_text())
    assert report["data_root"] == f"folder ({tiny_folder})"
    ckpt, onnx_model, published = report["models"]
    assert ckpt["counts"] == onnx_model["counts"] and ckpt["counts"]["live"] > 0 and ckpt["counts"]["spoof"] > 0
    assert ckpt["metrics"]["auroc"] == pytest.approx(onnx_model["metrics"]["auroc"], abs=1e-6)
    assert published["convention"]["input_size"] == 128 and published["threshold_choice"]["split"] == "val"
    prepared = tmp_path / "data" / "prepared"
    assert sorted(p.name.split("-")[1] for p in prepared.iterdir() if p.is_dir()) == ["128px", "64px"]
    # Faces were found once: the second crop reused the first's detections, box for box.
    (memo,) = prepared.glob("folder-faces-*.tsv")
    boxes = {}
    for cache in (p for p in prepared.iterdir() if p.is_dir()):
        rows = csv.DictReader((cache / "test_samples.tsv").open(), delimiter="\t")
        boxes[cache.name.split("-")[1]] = {
            r["key"]: [r[c] for c in "xywh"] for r in rows if r["box_from"] == "detected"
        }
    assert boxes["64px"] and boxes["64px"] == boxes["128px"]
    assert len(memo.read_text().splitlines()) > len(boxes["64px"])


def test_a_folder_without_parts_is_evaluated_whole(
    trained: dict[str, Path], tiny_folder: Path, reference_dir, tmp_path
):
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(tiny_folder / "test", root)
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    overrides = [f"ckpt_path={trained['onnx']}", "data=folder", f"data.root={root}", "data.num_workers=0"]
    overrides += [f"detector.model_path={yunet}", f"paths.data_dir={tmp_path / 'data'}", "threshold.rule=eer"]
    (model,) = json.loads(evaluate(compose_evaluate(overrides, tmp_path)).metrics.read_text())["models"]
    threshold = model["threshold_choice"]
    assert threshold["split"] == "test" and "no validation part" in threshold["reason"]
    assert "no validation part" in (tmp_path / "report" / "report.md").read_text()


def test_the_models_recorded_threshold_travels_with_its_export(
    trained: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """By default evaluation applies the operating point the model file records (chosen on its training run's
    validation data), the checkpoint and its ONNX export alike; a file without one falls back to eer."""
    recorded = torch.load(trained["ckpt"], map_location="cpu", weights_only=True)["fas_threshold"]["value"]
    assert read_metadata(trained["onnx"]).threshold["value"] == pytest.approx(recorded)
    models = f"[{trained['ckpt']},{trained['onnx']}]"
    payload = json.loads(
        evaluate(
            compose_evaluate([f"ckpt_path={models}", *TINY, f"data.root={tiny_data}"], tmp_path)
        ).metrics.read_text()
    )
    for model in payload["models"]:
        choice = model["threshold_choice"]
        assert choice["rule"] == "model" and choice["value"] == pytest.approx(recorded)
        assert choice["reason"].startswith(f"recorded in {Path(model['path']).name}: chosen by rule eer")
    proto = onnx.load(str(trained["onnx"]))
    info = read_metadata(proto)
    write_metadata(proto, replace(info, threshold=None))
    del proto.metadata_props[:]
    write_metadata(proto, replace(info, threshold=None))
    onnx.save(proto, str(tmp_path / "bare.onnx"))
    bare = compose_evaluate([f"ckpt_path={tmp_path / 'bare.onnx'}", *TINY, f"data.root={tiny_data}"], tmp_path / "b")
    (model,) = json.loads(evaluate(bare).metrics.read_text())["models"]
    assert model["threshold_choice"]["rule"] == "eer" and model["threshold_choice"]["split"] == "val"
    assert model["threshold_choice"]["reason"].startswith("bare.onnx records no threshold")


def test_only_the_parts_a_run_scores_are_detected_and_cropped(
    trained: dict[str, Path], tiny_folder: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """With the model's own threshold only test/ is cropped; a threshold chosen on validation data adds the
    train/ part it is held out from, the faces found before reused."""
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    base = [f"ckpt_path={trained['onnx']}", "data=folder", f"data.root={tiny_folder}", "data.num_workers=0"]
    base += [f"detector.model_path={yunet}", f"paths.data_dir={tmp_path / 'data'}"]
    evaluate(compose_evaluate(base, tmp_path / "a"))
    (cache,) = (p for p in (tmp_path / "data" / "prepared").iterdir() if p.is_dir())
    assert list(json.loads((cache / "manifest.json").read_text())["rows"]) == ["test"]
    (model,) = json.loads(
        evaluate(compose_evaluate([*base, "threshold.rule=eer"], tmp_path / "b")).metrics.read_text()
    )["models"]
    assert list(json.loads((cache / "manifest.json").read_text())["rows"]) == ["train", "test"]
    assert model["threshold_choice"]["split"] == "val"
    (on_val,) = json.loads(evaluate(compose_evaluate([*base, "split=val"], tmp_path / "c")).metrics.read_text())[
        "models"
    ]
    assert sum(on_val["counts"].values()) > 0  # the validation part alone is scored


@pytest.mark.slow
def test_several_models_on_several_data_sources_give_one_cross_dataset_table(
    trained: dict[str, Path], tiny_folder: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """Each model on each source alone, at the threshold that source's own validation part gives (a source
    without one: its evaluated data, flagged) -- the same numbers as evaluating that source by itself."""
    import shutil

    photos = tmp_path / "photos"
    shutil.copytree(tiny_folder / "test", photos)
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    suri = reference_dir / "suri-liveness/best_model.pth"
    common = ["data.num_workers=0", f"detector.model_path={yunet}", f"paths.data_dir={tmp_path / 'data'}"]
    common += ["threshold.rule=eer", "data.unsplit=test"]
    sources = ["data=sources", "+source@data.sources.mine=folder", f"data.sources.mine.root={tiny_folder}"]
    sources += ["+source@data.sources.photos=folder", f"data.sources.photos.root={photos}"]
    models = f"ckpt_path=[{trained['onnx']},{suri}]"
    files = evaluate(compose_evaluate([models, *sources, *common], tmp_path / "both"))
    both = json.loads(files.metrics.read_text())["models"]
    alone = evaluate(compose_evaluate([models, "data=folder", f"data.root={tiny_folder}", *common], tmp_path / "one"))
    for crossed, single in zip(both, json.loads(alone.metrics.read_text())["models"], strict=True):
        mine, photo = crossed["per_source"]["mine"], crossed["per_source"]["photos"]
        assert mine["threshold_choice"] == single["threshold_choice"] and mine["threshold_choice"]["split"] == "val"
        assert mine["counts"] == single["counts"]
        for key in ("auroc", "hter", "bpcer", "tpr_at_fpr_1e-2"):
            assert mine["metrics"][key] == pytest.approx(single["metrics"][key], abs=1e-9)
        choice = photo["threshold_choice"]
        assert choice["split"] == "test" and "no validation part" in choice["reason"]
        assert photo["counts"] == mine["counts"]  # the same images, tested whole
    for source in ("mine", "photos"):  # records no face was found in, in the parts read (all of them here)
        (cache,) = (tmp_path / "data" / "prepared").glob(f"{source}-64px-*")
        listed = len((cache / "skipped.tsv").read_text().splitlines()) - 1
        assert both[0]["per_source"][source]["skipped"] == listed > 0
    markdown = files.markdown.read_text()
    assert "## Cross-dataset: ROC-AUC / HTER of each model on each data source" in markdown
    assert "| model | mine | photos |" in markdown


def test_fused_scores_are_the_mean_per_face_on_the_faces_every_model_scored() -> None:
    """Faces are matched by (source, key), not by position: each model's crops may come in another order."""
    from fas.evaluate import fused_scores
    from fas.metrics import Scores

    first = Scores([0.2, 0.9, 0.4], [0, 1, 8], source=[0, 0, 1])
    first_keys = [(0, "a.jpg"), (0, "b.jpg"), (1, "a.jpg")]
    second = Scores([0.8, 0.0, 0.6, 0.3], [8, 0, 1, 0], source=[1, 0, 0, 0])
    second_keys = [(1, "a.jpg"), (0, "a.jpg"), (0, "b.jpg"), (0, "c.jpg")]
    fused = fused_scores([(first_keys, first), (second_keys, second)])
    assert fused.score.tolist() == pytest.approx([0.1, 0.75, 0.6])
    assert fused.spoof_type.tolist() == [0, 1, 8] and fused.source.tolist() == [0, 0, 1]
    third = Scores([0.5], [1])  # scored only b.jpg: the fusion keeps the faces every model scored
    fused = fused_scores([(first_keys, first), (second_keys, second), ([(0, "b.jpg")], third)])
    assert fused.score.tolist() == pytest.approx([(0.9 + 0.6 + 0.5) / 3]) and fused.spoof_type.tolist() == [1]


def test_fusing_a_model_with_itself_changes_nothing(reference_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    import shutil

    weights = reference_dir / "silentface/2.7_80x80_MiniFASNetV2.pth"
    twin = tmp_path / "twin" / weights.name
    twin.parent.mkdir()
    shutil.copy(weights, twin)
    overrides = [f"ckpt_path=[{weights},{twin}]", f"fuse=[[{weights},{twin}]]", "threshold.rule=eer"]
    files = evaluate(compose_evaluate([*overrides, *TINY, f"data.root={tiny_data}"], tmp_path))
    alone, _, fused = json.loads(files.metrics.read_text())["models"]
    assert fused["name"] == f"silentface/{weights.name} + twin/{weights.name}"
    assert fused["counts"] == alone["counts"]
    assert fused["threshold_choice"]["value"] == pytest.approx(alone["threshold_choice"]["value"], abs=1e-12)
    for key, value in alone["metrics"].items():
        assert fused["metrics"][key] == pytest.approx(value, abs=1e-9, nan_ok=True), key


def test_the_silentface_pair_fused_as_its_app_does(reference_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    """Each model on its own crop (2.7x and 4.0x the face box); the fusion's threshold is chosen on the fused
    validation scores (no file records one for it), and the report gets a third row."""
    from conftest import PUBLISHED_WEIGHTS

    v2, v1se = (str(reference_dir / relative) for relative in PUBLISHED_WEIGHTS[:2])
    overrides = [f"ckpt_path=[{v2},{v1se}]", f"fuse=[[{v2},{v1se}]]", *TINY, f"data.root={tiny_data}"]
    files = evaluate(compose_evaluate([*overrides, "class_scheme=binary"], tmp_path))
    first, second, fused = json.loads(files.metrics.read_text())["models"]
    assert fused["name"] == f"{Path(v2).name} + {Path(v1se).name}"
    assert fused["backbone"] == f"{first['backbone']} + {second['backbone']}"
    assert fused["counts"] == first["counts"] == second["counts"]
    choice = fused["threshold_choice"]
    assert choice["split"] == "val" and "a fusion records no threshold" in choice["reason"]
    assert 0.0 <= fused["metrics"]["auroc"] <= 1.0
    assert f"Model {Path(v2).name} + {Path(v1se).name}" in files.markdown.read_text()


def test_fusing_a_file_that_is_not_evaluated_is_one_line() -> None:
    from fas.evaluate import fused_groups

    assert fused_groups([["a.onnx", "b.onnx"]], ["b.onnx", "a.onnx"]) == [[1, 0]]
    with pytest.raises(ConfigError, match=r"fuse names c\.onnx, which ckpt_path does not list"):
        fused_groups([["a.onnx", "c.onnx"]], ["a.onnx", "b.onnx"])
    with pytest.raises(ConfigError, match="groups of 2"):
        fused_groups([["a.onnx"]], ["a.onnx"])


def test_attacks_of_unknown_type_are_scored_by_a_model_without_a_class_for_them(
    reference_dir: Path, tiny_folder: Path, tmp_path: Path
) -> None:
    """Silent-Face's print / live / replay model on live photos and a bare spoof/ folder: its live-vs-spoof
    score (1 - p(live)) covers every attack, so no metric is left undefined."""
    import shutil

    root = tmp_path / "photos"
    shutil.copytree(tiny_folder / "test" / "live", root / "live")
    shutil.copytree(tiny_folder / "test" / "spoof" / "s05", root / "spoof" / "s05")
    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    overrides = [
        f"ckpt_path={reference_dir / 'silentface' / '2.7_80x80_MiniFASNetV2.pth'}",
        "data=folder",
        f"data.root={root}",
        "data.unsplit=test",
        "data.num_workers=0",
        f"detector.model_path={yunet}",
        f"paths.data_dir={tmp_path / 'data'}",
        "threshold.rule=fixed",
        "threshold.value=0.5",
    ]
    (model,) = json.loads(evaluate(compose_evaluate(overrides, tmp_path)).metrics.read_text())["models"]
    assert model["class_scheme"] == "silentface3"
    assert model["counts"]["spoof"] > 0 and model["counts"]["live"] > 0  # the attacks were dropped before
    assert 0.0 <= model["metrics"]["auroc"] <= 1.0 and model["apcer_per_type"]["unknown"] is not None


def test_a_stress_preset_scores_every_model_again_under_each_change(
    trained: dict[str, Path], tiny_data: Path, tmp_path: Path
) -> None:
    """stress=<preset>: per model and change, figures against its clean scores in metrics.json and report.md; a
    change that changes nothing flips nothing, and a wider box moves the scores."""
    overrides = [
        f"ckpt_path={trained['onnx']}",
        *TINY,
        f"data.root={tiny_data}",
        "+stress.changes.unchanged.box_scale=1.0",
        "+stress.changes.wide.box_scale=1.6",
        "+stress.changes.blurred.frame._target_=albumentations.GaussianBlur",
        "+stress.changes.blurred.frame.sigma_limit=[3,3]",
        "+stress.changes.blurred.frame.blur_limit=[0,0]",
    ]
    files = evaluate(compose_evaluate(overrides, tmp_path))
    report = json.loads(files.metrics.read_text())
    (model,) = report["models"]
    stress = model["stress"]
    assert list(stress) == ["unchanged", "wide", "blurred"]
    assert stress["unchanged"]["flipped"] == 0.0 and stress["unchanged"]["mean_score_change"] == 0.0
    assert stress["unchanged"]["auroc"] == pytest.approx(model["metrics"]["auroc"], abs=1e-12)
    for name in ("wide", "blurred"):
        assert stress[name]["mean_score_change"] != 0.0 and 0.0 <= stress[name]["flipped"] <= 1.0
        assert stress[name]["auroc_change"] == pytest.approx(stress[name]["auroc"] - model["metrics"]["auroc"])
    assert report["metrics"]["test/stress/wide/flipped"] == stress["wide"]["flipped"]
    markdown = files.markdown.read_text()
    assert "## Capture stress" in markdown and "| model.onnx | blurred |" in markdown


def test_frames_of_videos_are_also_decided_per_video(
    trained: dict[str, Path], tiny_folder: Path, reference_dir: Path, tmp_path: Path
) -> None:
    """The folder's test clips (two live, two replay): besides its frames, each video gets one decision (the mean
    spoof score of its frames) at the model's threshold; the cache keeps each frame's video, and a cache made
    before it did reads as photos."""
    from fas.data.cache import read_cached_split

    yunet = reference_dir / "yunet/face_detection_yunet_2023mar.onnx"
    overrides = [f"ckpt_path={trained['onnx']}", "data=folder", f"data.root={tiny_folder}", "data.num_workers=0"]
    overrides += [f"detector.model_path={yunet}", f"paths.data_dir={tmp_path / 'data'}"]
    files = evaluate(compose_evaluate(overrides, tmp_path))
    (model,) = json.loads(files.metrics.read_text())["models"]
    assert model["video"]["counts"] == {"live": 2, "spoof": 2}
    assert model["video"]["metrics"]["threshold"] == model["metrics"]["threshold"]
    assert "| model.onnx | videos | 2 | 2 |" in files.markdown.read_text()
    (cache,) = (p for p in (tmp_path / "data" / "prepared").iterdir() if p.is_dir())
    videos = {s.video for s in read_cached_split(cache, "test", "folder")}
    assert {v for v in videos if v} == {
        f"test/{label}/s0{n}/clip.mp4" for label in ("live", "spoof/replay") for n in (4, 5)
    }
    table = cache / "test_samples.tsv"
    rows = [line.split("\t")[:-1] for line in table.read_text().splitlines()]  # as written before the column
    table.write_text("\n".join("\t".join(row) for row in rows) + "\n")
    assert {s.video for s in read_cached_split(cache, "test", "folder")} == {None}
