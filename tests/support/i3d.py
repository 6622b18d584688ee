"""A converted-I3D cache holding a random network: what ``train.init: i3d-kinetics400`` loads, without the 47 MB
download (the real weights are tests/test_i3d.py's business)."""
from __future__ import annotations

from pathlib import Path

import torch

from model.i3d import CONVERTED_NAME, I3D


def random_i3d_cache(root: Path, monkeypatch) -> Path:
    """Point ``VIVIT_CACHE`` at ``root`` and put a random I3D's state dict where ``model.i3d.cache_dir`` looks."""
    monkeypatch.setenv("VIVIT_CACHE", str(root))
    (root / "i3d").mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    torch.save(I3D().state_dict(), root / "i3d" / CONVERTED_NAME)
    return root
