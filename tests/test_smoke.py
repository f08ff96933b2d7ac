import numpy as np

import fastconv


def test_gemm_matches_numpy_float64(arch, nthreads, rng):
    a = rng.standard_normal((37, 53))
    b = rng.standard_normal((53, 29))
    np.testing.assert_allclose(fastconv.gemm(a, b), a @ b, rtol=1e-12, atol=1e-12)
