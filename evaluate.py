"""Evaluate models and write a PAD report: `python evaluate.py ckpt_path=<file or [files]>` (configs/evaluate.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from fas.cli import exit_on_user_error
from fas.evaluate import evaluate
from fas.hydra_utils import refuse_renamed_overrides


@hydra.main(version_base="1.3", config_path="configs", config_name="evaluate")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        evaluate(cfg)


if __name__ == "__main__":
    refuse_renamed_overrides(sys.argv[1:])
    main()
