"""WiSE-FT with one interpolation weight per backbone stage: which stage's move gains Replay and which loses NUAA.

`fas.finetune.interpolate` keeps `(1 - a) * published + a * fine-tuned` with one `a` for the whole backbone. Here
each line of the variants file gives one `a` per stage of the backbone's `stages` (for MiniFASNet: stride 2, 4,
8, 16 and the classifier); every variant is scored in PyTorch on a third of Replay devel (its EER threshold), half
of Replay test (ROC-AUC, HTER at that threshold) and NUAA test (every 5th photo, ROC-AUC). Subsets keep a variant
to about a minute on 2 cores; the figures are for comparing variants, the full-split ones come from `evaluate.py`.

    python experiments/real_faces/stagewise_wise.py <fine-tuned .ckpt> <published .pth> <variants file> \\
        <Replay tree> <NUAA tree> [overrides, e.g. detector.model_path=... paths.data_dir=...]

A variants line is `<name> <a of stage 0> <a of stage 1> ...`; `#` starts a comment.
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

from fas.export.pipeline import datamodule_for, labelled_images
from fas.hydra_utils import silence_library_noise
from fas.inference.backends import load_backend
from fas.metrics import equal_error_rate, roc_auc
from fas.models.checkpoint import backbone_state_dict, read_checkpoint

CONFIGS = str(Path(__file__).resolve().parents[2] / "configs")


def crops(checkpoint: str, root: str, split: str, every: int, overrides: list[str]) -> tuple[torch.Tensor, np.ndarray]:
    """(every `every`-th crop of `split`, is-spoof flags) of a folder tree, cropped as the checkpoint records."""
    backend = load_backend(checkpoint)
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
        datamodule = datamodule_for(cfg.data, backend.info, cfg.get("detector"))
        datamodule.prepare_data()
        datamodule.setup("fit")
        dataset = datamodule.splits[split].without_augmentation()
        data = labelled_images(Subset(dataset, range(0, len(dataset), every)))
    return torch.from_numpy(data.images), np.asarray(data.targets) != backend.info.class_scheme.real_class_index


def spoof_scores(model: torch.nn.Module, images: torch.Tensor, real_class_index: int) -> np.ndarray:
    with torch.no_grad():
        chunks = [torch.softmax(model(images[i : i + 256]), 1)[:, real_class_index] for i in range(0, len(images), 256)]
    return 1 - torch.cat(chunks).numpy()


def stage_of(backbone: torch.nn.Module) -> dict[str, int]:
    """Top-level child name -> stage index."""
    return {name: index for index, names in enumerate(backbone.stages) for name in names}


def mixed(published: dict, tuned: dict, stages: dict[str, int], weights: list[float]) -> dict:
    """Each floating-point tensor (weights and BatchNorm statistics) mixed with its stage's a; counters as tuned."""
    state = {}
    for key, value in tuned.items():
        weight = weights[min(stages[key.split(".")[0]], len(weights) - 1)]
        state[key] = (1 - weight) * published[key] + weight * value if value.is_floating_point() else value
    return state


def main() -> None:
    silence_library_noise()
    tuned_path, published_path, variants_path, replay, nuaa, *overrides = sys.argv[1:]
    backend = load_backend(tuned_path)
    model, real = backend.model, backend.info.class_scheme.real_class_index
    start = time.perf_counter()
    val = crops(tuned_path, replay, "val", 3, overrides)
    test = crops(tuned_path, replay, "test", 2, overrides)
    nuaa_test = crops(tuned_path, nuaa, "test", 1, [*overrides, "data.sources.folder.image_stride=5"])
    seconds = time.perf_counter() - start
    print(f"{len(val[0])} devel, {len(test[0])} test, {len(nuaa_test[0])} NUAA crops ({seconds:.0f} s)")
    print("stages:", [" ".join(names) for names in model.stages])
    tuned = backbone_state_dict(read_checkpoint(tuned_path))
    published = backbone_state_dict(read_checkpoint(published_path))
    stages = stage_of(model)
    for line in Path(variants_path).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, *weights = line.split()
        model.load_state_dict(mixed(published, tuned, stages, [float(w) for w in weights]))
        val_scores = spoof_scores(model, val[0], real)
        _, threshold = equal_error_rate(val_scores, val[1])
        test_scores = spoof_scores(model, test[0], real)
        apcer, bpcer = np.mean(test_scores[test[1]] < threshold), np.mean(test_scores[~test[1]] >= threshold)
        nuaa_auc = roc_auc(spoof_scores(model, nuaa_test[0], real), nuaa_test[1])
        val_auc, test_auc = roc_auc(val_scores, val[1]), roc_auc(test_scores, test[1])
        print(
            f"{name:14s} devel ROC-AUC {val_auc:.4f}  test ROC-AUC {test_auc:.4f}"
            f" HTER {100 * (apcer + bpcer) / 2:.2f}%  NUAA ROC-AUC {nuaa_auc:.4f}",
            flush=True,
        )


if __name__ == "__main__":
    main()
