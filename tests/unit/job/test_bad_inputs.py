"""The generated corpus of bad and unusual inputs: each decodes correctly or gets its error kind."""

from __future__ import annotations

import resource

import pytest

from bench.corpus import bad_inputs
from xai_pipeline.job.decode import decode_image

CASES = bad_inputs()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_each_input_has_its_expected_outcome(case) -> None:
    out = decode_image(case.data, 64)
    assert out.status.value == case.status, out.error
    if case.status == "ok":
        assert out.pixels is not None and out.pixels.shape == (3, 64, 64) and out.error == ""
        assert (out.width, out.height) == (case.width, case.height)
    else:
        assert out.pixels is None and out.error


def test_bomb_costs_no_memory() -> None:
    bomb = next(c for c in CASES if c.name == "bomb.png")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for _ in range(20):
        decode_image(bomb.data, 224)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 50 * 1024  # KiB: under 50 MB
