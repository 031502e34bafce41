import random

from stagger.core.placement import _FreeTree


def test_first_fit_query_matches_a_linear_scan() -> None:
    rng = random.Random(1)
    for _ in range(400):
        n = rng.randint(1, 70)
        tree = _FreeTree(n)
        values = []
        for i in range(n):
            util, mem = rng.choice([-1.0, rng.random()]), rng.randint(-1, 100)
            tree.set(i, util, mem)
            values.append((util, mem))
        for _ in range(20):
            start, need_util, need_mem = rng.randint(0, n + 2), rng.random(), rng.randint(0, 100)
            fits = [
                i for i in range(start, n) if values[i][0] >= need_util and values[i][1] >= need_mem
            ]
            expected = fits[0] if fits else None
            assert tree.first(start, need_util, need_mem) == expected
