from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.consumer_harness import FakeParts


@pytest.fixture
def parts(tmp_path: Any) -> Iterator[FakeParts]:
    """The consumer's parts on fakes: an in-memory QBO and a SQLite state store (tests.consumer_harness)."""
    p = FakeParts(tmp_path)
    yield p
    p.close()
