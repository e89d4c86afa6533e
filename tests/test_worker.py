"""The worker's pure helpers (reconciler/run/worker.py); its behaviour is in test_controller*.py."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from reconciler.run.worker import pack_times, unpack_times


@pytest.mark.parametrize(("times", "packed"), [
    ({}, (None, None, None)),
    ({"lastProbeTime": "2026-12-07T11:39:36Z"}, (1796643576.0, None, None)),
    ({"lastProbeTime": "2026-12-07T11:39:36Z", "nextProbeTime": "2026-12-07T11:49:36Z",
      "lastAuthTime": "2026-12-06T11:39:36Z"}, (1796643576.0, 1796644176.0, 1796557176.0)),
    # text that would not read back the same is kept as it is (no write because of a format)
    ({"lastAuthTime": "2026-12-07T11:39:36.5Z"}, (None, None, "2026-12-07T11:39:36.5Z")),
    ({"lastAuthTime": "2026-12-07T12:39:36+01:00"}, (None, None, "2026-12-07T12:39:36+01:00")),
    ({"lastAuthTime": "not a time"}, (None, None, "not a time")),
    ({"lastProbeTime": "", "nextProbeTime": None}, (None, None, None)),
    ({"conditions": []}, (None, None, None)),  # other fields are not kept
])
def test_times_are_packed_as_epoch_seconds_and_read_back_as_written(
        times: dict[str, Any], packed: tuple[Any, ...]) -> None:
    assert pack_times(times) == packed
    kept = {k: v for k, v in times.items() if v and k != "conditions"}
    assert unpack_times(pack_times(times)) == kept


def test_nothing_kept_reads_as_none() -> None:
    assert unpack_times(None) is None


def test_packed_times_are_smaller_than_the_status_fields() -> None:
    """Memory per account (issue 26): a tuple of floats rather than a dict of strings."""
    times = {"lastProbeTime": "2026-12-07T11:39:36Z", "nextProbeTime": "2026-12-07T11:49:36Z",
             "lastAuthTime": "2026-12-06T11:39:36Z"}
    packed = pack_times(times)
    size = sys.getsizeof(packed) + sum(sys.getsizeof(v) for v in packed)
    assert size < (sys.getsizeof(times) + sum(sys.getsizeof(v) for v in times.values())) / 2
