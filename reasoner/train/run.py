"""What every training command does first (RL, the SFT warm start, reward models): one shared run setup.

``start_run`` makes the run directory and writes the resolved settings to its ``config.json``, seeds Python's
and torch's generators from ``train.seed``, sets the CPU threads (``train.cpu_threads``), picks the device and,
when asked to resume, finds the latest checkpoint. Each command then builds its own models and data.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import torch

from reasoner.config import Config, to_dict
from reasoner.models import default_device, set_cpu_threads
from reasoner.train.checkpoint import latest_checkpoint


@dataclass(frozen=True)
class RunStart:
    device: torch.device
    checkpoint: Path | None  # the checkpoint to resume from, or None for a fresh start


def start_run(
    cfg: Config,
    run_dir: Path | None,
    *,
    resume: bool = False,
    write_config: bool = True,
    device: torch.device | None = None,
) -> RunStart:
    """Prepare a run in ``run_dir`` (None: nothing on disk, e.g. the SFT warm start writes its own cache).

    ``write_config=False`` on every rank but the first under torchrun; ``device`` there is the rank's device.
    """
    if run_dir is not None:
        run_dir.mkdir(parents=True, exist_ok=True)
        if write_config:
            (run_dir / "config.json").write_text(json.dumps(to_dict(cfg), indent=2))
    random.seed(cfg.train.seed)
    torch.manual_seed(cfg.train.seed)
    set_cpu_threads(cfg.train.cpu_threads)
    ckpt = latest_checkpoint(run_dir) if resume and run_dir is not None else None
    return RunStart(device=device or default_device(), checkpoint=ckpt)
