"""Every option of every config group composes, resolves and instantiates."""

from __future__ import annotations

from pathlib import Path

import hydra
import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fas.convention import ClassScheme
from fas.data.datamodule import FaceDataModule, instantiate_datamodule
from fas.module import LivenessModule
from fas.registry import published_convention

from conftest import CONFIG_DIR, compose_train

GROUPS = [
    "model",
    "data",
    "convention",
    "class_scheme",
    "optimizer",
    "augmentation",
    "trainer",
    "logger",
    "callbacks",
    "quantization",
    "debug",
    "experiment",
]


BASES = {("data", "default")}  # what the data configs share; not an option of its own


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONFIG_DIR / group).glob("*.yaml") if (group, p.stem) not in BASES)


def data_overrides(option: str, tiny_data: Path, tiny_folder: Path) -> list[str]:
    """What each data option needs to point at the generated data."""
    if option == "folder":
        return [f"data.root={tiny_folder}"]
    if option == "manifest":
        return [f"data.manifest={tiny_folder / 'manifest.csv'}"]
    if option == "mix":
        return [f"data.sources.celeba_spoof.root={tiny_data}", f"data.sources.folder.root={tiny_folder}"]
    if option == "sources":
        return ["+source@data.sources.mine=folder", f"data.sources.mine.root={tiny_folder}"]
    if option == "cross_dataset":  # five folder trees under one root (instantiating reads none of them)
        return [f"data.root={tiny_folder}"]
    return [f"data.root={tiny_data}", "data.synthetic=null"]


def data_option(group: str, option: str) -> str:
    """The data option a config option trains on: its own for data=..., data=cross_dataset for the cross-dataset
    experiments, the generated data otherwise."""
    if group == "data":
        return option
    return "cross_dataset" if group == "experiment" and option.startswith("cross_dataset") else "synthetic"


ALL_OPTIONS = [(group, option) for group in GROUPS for option in options(group)]


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), group
    assert {"minifasnet_v1", "minifasnet_v2", "minifasnet_v1se", "minifasnet_v2se", "mobilenetv4"} <= set(
        options("model")
    )


@pytest.mark.parametrize(("group", "option"), ALL_OPTIONS, ids=[f"{g}={o}" for g, o in ALL_OPTIONS])
def test_option_composes_and_instantiates(
    group: str, option: str, tmp_path: Path, tiny_data: Path, tiny_folder: Path
) -> None:
    overrides = [
        f"{group}={option}",
        *data_overrides(data_option(group, option), tiny_data, tiny_folder),
    ]
    if (group, option) == ("convention", "pretrained"):
        overrides.append("pretrained=silentface-v2-2.7")  # a registry name: its convention needs no file
    if group == "logger":
        overrides.append("++logger.wandb.offline=true" if option in ("wandb", "many_loggers") else "seed=0")
    cfg = compose_train(overrides, tmp_path)
    OmegaConf.resolve(cfg)
    datamodule = instantiate_datamodule(cfg.data)
    assert isinstance(datamodule, FaceDataModule) and isinstance(datamodule.class_scheme, ClassScheme)
    size = datamodule.convention.input_size
    if datamodule.train_transform is not None:
        crop = np.zeros((size, size, 3), np.uint8)
        assert datamodule.train_transform(image=crop)["image"].shape == crop.shape
    model = hydra.utils.instantiate(
        cfg.model, convention=datamodule.convention.to_dict(), class_scheme=datamodule.class_scheme.to_dict()
    )
    assert isinstance(model, LivenessModule)
    assert model.class_scheme.num_classes == len(cfg.class_scheme.class_names)
    model.configure_optimizers()
    if cfg.trainer.accelerator != "gpu" or torch.cuda.is_available():
        hydra.utils.instantiate(cfg.trainer, logger=False, callbacks=[])
    for name in ("callbacks", "logger"):
        for entry in (cfg.get(name) or {}).values():
            hydra.utils.instantiate(entry)


def test_the_three_one_key_settings(tmp_path: Path) -> None:
    cfg = compose_train(["convention.input_size=128", "model.ft_weight=0", "class_scheme=silentface3"], tmp_path)
    OmegaConf.resolve(cfg)
    assert cfg.augmentation.train.transforms[0].size == [128, 128]
    assert cfg.model.ft_weight == 0
    assert cfg.class_scheme.real_class_index == 1


def test_a_finetune_takes_the_convention_its_weights_record(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=finetune_suri", "data.root=unused"], tmp_path)
    OmegaConf.resolve(cfg)
    assert hydra.utils.instantiate(cfg.convention) == published_convention("suri_liveness")
    assert cfg.augmentation.train.transforms[0].size == [128, 128]  # the size the pretrained weights record
    cfg = compose_train(["experiment=finetune_silentface", "data.root=unused"], tmp_path)
    assert hydra.utils.instantiate(cfg.convention) == published_convention("silentface_2.7")
    cfg = compose_train(["experiment=finetune_silentface_v1se", "data.root=unused"], tmp_path)
    assert hydra.utils.instantiate(cfg.convention) == published_convention("silentface_4.0")
    assert cfg.model.backbone == "minifasnet_v1se" and cfg.finetune.frozen_stages == 3


def test_slurm_launcher_composes_with_one_task_per_device() -> None:
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=["hydra/launcher=slurm", "trainer=ddp", "trainer.devices=4", "trainer.num_nodes=2"],
            return_hydra_config=True,
        )
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.tasks_per_node, launcher.gpus_per_node, launcher.nodes) == (4, 4, 2)
    assert cfg.trainer.strategy == "ddp"
