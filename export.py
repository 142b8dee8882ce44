"""Export a checkpoint to ONNX + INT8 (and LiteRT) with a parity report: `python export.py ckpt_path=...`
(configs/export.yaml)."""

import sys

import hydra
from omegaconf import DictConfig

from fas.cli import exit_on_user_error
from fas.export.pipeline import export
from fas.hydra_utils import refuse_renamed_overrides
from fas.media import set_max_pixels


@hydra.main(version_base="1.3", config_path="configs", config_name="export")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        set_max_pixels(cfg.get("max_image_pixels"))
        export(cfg)


if __name__ == "__main__":
    refuse_renamed_overrides(sys.argv[1:])
    main()
