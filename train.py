"""Train a face anti-spoofing model: `python train.py [overrides]` (see configs/train.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from fas.cli import exit_on_user_error
from fas.hydra_utils import refuse_renamed_overrides
from fas.train import train


@hydra.main(version_base="1.3", config_path="configs", config_name="train")
def main(cfg: DictConfig) -> float | None:
    with exit_on_user_error():
        metric, _ = train(cfg)
    return metric


if __name__ == "__main__":
    refuse_renamed_overrides(sys.argv[1:])
    main()
