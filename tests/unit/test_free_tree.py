import random

import pytest

from stagger.core.placement.index import _FreeTree, _RoomIndex


@pytest.mark.parametrize("index", [_FreeTree, _RoomIndex])
def test_first_fit_query_matches_a_linear_scan(index: type) -> None:
    rng = random.Random(1)
    for _ in range(400):
        n = rng.randint(1, 70)
        tree = index(n)
        values = []
        for i in range(n):
            util, mem = rng.choice([-1.0, rng.random()]), rng.choice([-1, 0, rng.randint(1, 5000)])
            tree.set(i, util, mem)
            values.append((util, mem))
        for _ in range(n // 2):  # updates move GPUs between memory classes
            i = rng.randrange(n)
            values[i] = (
                rng.choice([-1.0, rng.random()]),
                rng.choice([-1, 0, rng.randint(1, 5000)]),
            )
            tree.set(i, *values[i])
        for _ in range(20):
            start, need_util, need_mem = rng.randint(0, n + 2), rng.random(), rng.randint(0, 5000)
            fits = [
                i for i in range(start, n) if values[i][0] >= need_util and values[i][1] >= need_mem
            ]
            expected = fits[0] if fits else None
            assert tree.first(start, need_util, need_mem) == expected
