"""The Plan's no-copy reshape rule agrees with NumPy's on random strided views."""

import numpy as np

from kiln.compile.strides import reshape_strides


def test_reshape_strides_match_numpy_views():
    rng = np.random.default_rng(0)
    views = copies = 0
    for _ in range(1500):
        shape = tuple(int(x) for x in rng.integers(1, 5, size=rng.integers(1, 5)))
        big = tuple(s * 2 if i % 2 == 0 else s for i, s in enumerate(shape))
        v = np.arange(int(np.prod(big))).reshape(big)[tuple(slice(0, s) for s in shape)]
        v = v.transpose(rng.permutation(len(shape)))
        strides = tuple(x // v.itemsize for x in v.strides)
        new, m = [], v.size
        for p in (2, 3, 1, 4, 2):
            if m % p == 0 and rng.random() < 0.5:
                new.append(p)
                m //= p
        new.append(m)
        rng.shuffle(new)
        new = tuple(int(x) for x in new)
        got = reshape_strides(v.shape, strides, new)
        try:
            r = v.view()
            r.shape = new                      # NumPy refuses when the reshape needs a copy
            want = tuple(x // v.itemsize for x in r.strides)
        except AttributeError:
            want = None
        assert (got is None) == (want is None), (v.shape, strides, new, got, want)
        if got is not None:
            idx = np.indices(new).reshape(len(new), -1).T
            assert (idx @ np.array(got) == idx @ np.array(want)).all(), (v.shape, strides, new, got, want)
            views += 1
        else:
            copies += 1
    assert views > 500 and copies > 50
