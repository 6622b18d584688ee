"""What every stage returns (and a failed stage carries in :class:`tasks.lib.errors.StageFailed`): one typed record.

A :class:`StageResult` is a frozen dataclass, so code reads ``result.counts`` and a type checker knows the fields.
It is also a read-only mapping of the same fields (``result["counts"]``, ``dict(result)``): the CLI prints it,
Prefect shows it as the flow run's result, and JSON takes it without a custom encoder.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Iterator


@dataclass(frozen=True)
class StageResult(Mapping):
    stage: str  # download, filter, frames, train
    counts: dict[str, int] = field(default_factory=dict)  # what the summary table shows, per stage
    outputs: list[str] = field(default_factory=list)  # the paths (or store URI) the stage wrote
    message: str = ""  # one human line (more for warnings)
    failed: bool = False
    result: dict[str, Any] | None = None  # train: the run, its metrics and the registry decision

    def _keys(self) -> list[str]:
        return [f.name for f in fields(self) if not (f.name == "result" and self.result is None)]

    def __getitem__(self, key: str) -> Any:
        if key not in self._keys():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._keys())

    def __len__(self) -> int:
        return len(self._keys())
