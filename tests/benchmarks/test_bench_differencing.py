"""The differencing benchmark's inputs: new cells really are fresh and far apart,
and the "same size" earlier cells really pass the row-count pre-filter."""

from __future__ import annotations

import numpy as np

from benchmarks.bench_differencing import (
    MIN_GROUP_SIZE,
    earlier_masks,
    make_frame,
    variants,
)


def test_new_cells_are_the_same_size_and_far_apart() -> None:
    frame = make_frame(5000)
    mask = (frame["diagnosis"] != "X").to_numpy()
    new = variants(mask, 6)
    sizes = {int(v.sum()) for v in new}
    assert len(sizes) == 1 and sizes.pop() < int(mask.sum())
    for i, a in enumerate(new):
        assert not np.any(a & ~mask)
        for b in new[i + 1 :]:
            assert int((a ^ b).sum()) >= MIN_GROUP_SIZE


def test_earlier_cells_of_a_given_size() -> None:
    frame = make_frame(2000)
    assert {int(m.sum()) for m in earlier_masks(frame, 5, rows=321)} == {321}
    varied = earlier_masks(frame, 20)
    assert len({int(m.sum()) for m in varied}) > 10
