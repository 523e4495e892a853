"""One torch thread per test here: on a shared 2-core machine a 2-thread OpenMP pool makes tiny ops ~100× slower."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)
