from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import time_machine


@pytest.fixture
def fresh_minute():
    """Per-minute limits count in fixed UTC windows: run the test from the start of a
    minute, the clock ticking on, so that its requests never straddle two windows.
    Processes forked during the test inherit the clock."""
    start = datetime.now(UTC).replace(second=0, microsecond=0) + timedelta(minutes=1)
    with time_machine.travel(start, tick=True):
        yield start
