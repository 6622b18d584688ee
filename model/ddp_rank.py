"""One DDP rank: ``python -m model.ddp_rank SPEC``, what torchrun runs in each process (:mod:`model.distributed`).

Apart from :mod:`model.distributed` because it calls :func:`model.training.fit`, which itself calls the launcher and
the hooks there: the entry point sits above both, so neither imports the other back."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from model.distributed import EventWriter, leave
from model.options import TrainOptions
from model.training import fit


def main(argv: list[str] | None = None) -> int:
    spec = json.loads(Path((argv or sys.argv[1:])[0]).read_text())
    options = TrainOptions.model_validate(spec["options"])
    rank0 = int(os.environ.get("RANK", "0")) == 0
    finished = False
    try:
        fit(Path(spec["dataset_dir"]), options, seed=int(spec["seed"]), work_dir=Path(spec["work_dir"]),
            callback=EventWriter(Path(spec["events"])) if rank0 else None)
        finished = True
    finally:
        leave(finished)
    return 0


if __name__ == "__main__":
    sys.exit(main())
