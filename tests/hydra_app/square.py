"""A Hydra app for tests/test_hydra_launcher.py: writes x² into its job's output directory."""

import json
import os
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig


@hydra.main(version_base=None, config_path=".", config_name="square")
def main(cfg: DictConfig) -> int:
    out = Path(HydraConfig.get().runtime.output_dir)
    (out / "result.json").write_text(json.dumps({
        "x": cfg.x, "square": cfg.x * cfg.x, "lsf_job": os.environ.get("LSB_JOBID"),
        "lsf_index": os.environ.get("LSB_JOBINDEX")}))
    return cfg.x * cfg.x


if __name__ == "__main__":
    main()
