"""WiSE-FT with one interpolation weight per backbone stage: which stage's move gains Replay and which loses NUAA.

`fas.finetune.interpolate` keeps `(1 - a) * published + a * fine-tuned` with one `a` for the whole backbone. Here
each line of the variants file gives one `a` per stage of the backbone's `stages` (for MiniFASNet: stride 2, 4,
8, 16 and the classifier); every variant is scored in PyTorch on a third of Replay devel (its EER threshold), half
of Replay test (ROC-AUC, HTER at that threshold) and NUAA test (every 5th photo, ROC-AUC). Subsets keep a variant
to about a minute on 2 cores; the figures are for comparing variants, the full-split ones come from `evaluate.py`.

    python experiments/real_faces/stagewise_wise.py <fine-tuned .ckpt>[+<.ckpt>...] <published .pth> <variants> \\
        <Replay tree> <NUAA tree> [overrides, e.g. detector.model_path=... paths.data_dir=...]

A variants line is `<name> <a of stage 0> <a of stage 1> ...`; `#` starts a comment. Several fine-tuned
checkpoints joined by `+` (fine-tunes of the same published weights with other seeds) are averaged first, a
uniform model soup (Wortsman et al., 2022), and the soup is what is mixed with the published weights.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from torch.utils.data import Subset

from fas.convention import ModelInfo
from fas.data.datamodule import FaceDataModule
from fas.export.pipeline import datamodule_for, labelled_images
from fas.finetune import interpolate
from fas.hydra_utils import silence_library_noise
from fas.inference.backends import TorchBackend
from fas.metrics import equal_error_rate, roc_auc, spoof_scores
from fas.models.checkpoint import backbone_state_dict, read_checkpoint

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def folder_splits(checkpoint: str, info: ModelInfo, root: str, overrides: list[str]) -> FaceDataModule:
    """A folder tree's splits, cropped as the checkpoint records (`export.py`'s config with `data=folder`)."""
    with tempfile.TemporaryDirectory() as tmp, initialize_config_dir(config_dir=CONFIGS, version_base="1.3"):
        cfg = compose(
            "export",
            overrides=[
                f"ckpt_path={checkpoint}",
                "data=folder",
                f"data.root={root}",
                f"hydra.run.dir={tmp}",
                *overrides,
            ],
            return_hydra_config=True,
        )
        HydraConfig().set_config(cfg)
        datamodule = datamodule_for(cfg.data, info, cfg.get("detector"))
        datamodule.prepare_data()
        datamodule.setup("fit")
    return datamodule


def every_nth(
    datamodule: FaceDataModule, split: str, every: int, real_class_index: int
) -> tuple[torch.Tensor, np.ndarray]:
    """(every `every`-th crop of `split`, is-spoof flags)."""
    dataset = datamodule.splits[split].without_augmentation()
    data = labelled_images(Subset(dataset, range(0, len(dataset), every)))
    return torch.from_numpy(data.images), np.asarray(data.targets) != real_class_index


def scores(model: torch.nn.Module, images: torch.Tensor, real_class_index: int) -> np.ndarray:
    with torch.no_grad():
        logits = torch.cat([model(images[i : i + 256]) for i in range(0, len(images), 256)])
    return spoof_scores(logits, real_class_index).numpy()


def soup(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The mean of each floating-point tensor over `states` (the first state's value for anything else)."""
    return {
        key: torch.stack([state[key] for state in states]).mean(0) if value.is_floating_point() else value
        for key, value in states[0].items()
    }


def mixed(published: dict, tuned: dict, stage_of: dict[str, int], weights: list[float]) -> dict:
    """`fas.finetune.interpolate` of each stage's tensors with that stage's a."""
    state = {}
    for stage in set(stage_of.values()):
        keys = [key for key in tuned if stage_of[key.split(".")[0]] == stage]
        weight = weights[min(stage, len(weights) - 1)]
        state |= interpolate(published, {key: tuned[key] for key in keys}, weight)
    return state


def main() -> None:
    silence_library_noise()
    tuned_paths, published_path, variants_path, replay, nuaa, *overrides = sys.argv[1:]
    tuned_path, *other_paths = tuned_paths.split("+")
    checkpoint = read_checkpoint(tuned_path)
    backend = TorchBackend.from_lightning_checkpoint(tuned_path, checkpoint=checkpoint)
    model, info, real = backend.model, backend.info, backend.info.class_scheme.real_class_index
    start = time.perf_counter()
    replay_splits = folder_splits(tuned_path, info, replay, overrides)
    val, test = every_nth(replay_splits, "val", 3, real), every_nth(replay_splits, "test", 2, real)
    nuaa_splits = folder_splits(tuned_path, info, nuaa, [*overrides, "data.sources.folder.image_stride=5"])
    nuaa_test = every_nth(nuaa_splits, "test", 1, real)
    seconds = time.perf_counter() - start
    print(f"{len(val[0])} devel, {len(test[0])} test, {len(nuaa_test[0])} NUAA crops ({seconds:.0f} s)")
    print("stages:", [" ".join(names) for names in model.stages])
    tuned = soup([backbone_state_dict(checkpoint), *(backbone_state_dict(read_checkpoint(p)) for p in other_paths)])
    published = backbone_state_dict(read_checkpoint(published_path))
    stage_of = {name: index for index, names in enumerate(model.stages) for name in names}
    for line in Path(variants_path).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, *weights = line.split()
        model.load_state_dict(mixed(published, tuned, stage_of, [float(w) for w in weights]))
        val_scores = scores(model, val[0], real)
        _, threshold = equal_error_rate(val_scores, val[1])
        test_scores = scores(model, test[0], real)
        apcer, bpcer = np.mean(test_scores[test[1]] < threshold), np.mean(test_scores[~test[1]] >= threshold)
        nuaa_auc = roc_auc(scores(model, nuaa_test[0], real), nuaa_test[1])
        val_auc, test_auc = roc_auc(val_scores, val[1]), roc_auc(test_scores, test[1])
        print(
            f"{name:14s} devel ROC-AUC {val_auc:.4f}  test ROC-AUC {test_auc:.4f}"
            f" HTER {100 * (apcer + bpcer) / 2:.2f}%  NUAA ROC-AUC {nuaa_auc:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
