"""Export a checkpoint to ONNX + INT8 with a parity report: `python export.py ckpt_path=...` (configs/export.yaml)."""

import hydra
from omegaconf import DictConfig

from fas.cli import exit_on_user_error
from fas.export.pipeline import export


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        export(cfg)


if __name__ == "__main__":
    main()
