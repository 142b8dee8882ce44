"""`python -m fas.data.prepare root=<source folder> output=<cache folder> [source=folder] [convention=...]`
(configs/prepare.yaml): crop every face of a data source once into a packed cache (fas/data/prepare)."""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from fas.cli import exit_on_user_error
from fas.data.prepare import prepare
from fas.detect import detector_factory
from fas.errors import ConfigError
from fas.hydra_utils import CONFIG_DIR, refuse_renamed_overrides
from fas.media import set_max_pixels

log = logging.getLogger("fas.data.prepare")


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="prepare")
def main(cfg: DictConfig) -> None:
    with exit_on_user_error():
        for key in ("root", "output"):
            if OmegaConf.is_missing(cfg, key):
                raise ConfigError(
                    f"{key} is not set: python -m fas.data.prepare root=/path/to/CelebA_Spoof output=/path/to/cache"
                )
        set_max_pixels(cfg.get("max_image_pixels"))
        summary = prepare(
            hydra.utils.instantiate(cfg.source),
            cfg.output,
            hydra.utils.instantiate(cfg.convention),
            detector=detector_factory(cfg.get("detector")),
            splits=tuple(cfg.splits) if cfg.get("splits") else None,
            workers=cfg.workers,
            chunk_size=cfg.chunk_size,
            progress=cfg.progress,
            face_rule=cfg.face_rule,
        )
        log.info("%s", summary)


if __name__ == "__main__":
    refuse_renamed_overrides(sys.argv[1:])
    main()
