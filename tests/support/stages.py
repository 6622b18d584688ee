"""Running a stage flow that is expected to fail: it must raise StageFailed (so its flow run ends Failed in
Prefect) and carry its summary."""
from __future__ import annotations

from typing import Any, Callable

import pytest

from tasks.lib.errors import StageFailed


def failed_summary(flow: Callable[..., Any], *args: Any, **kwargs: Any) -> dict[str, Any]:
    with pytest.raises(StageFailed) as info:
        flow(*args, **kwargs)
    summary = info.value.summary
    assert summary["failed"] is True
    return summary
