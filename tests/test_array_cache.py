"""The array cache (fastconv/_array_cache.h): NumPy's large blocks reused inside fastconv.nn's containers."""
import threading

import numpy as np
import pytest

import fastconv
from fastconv import _C, nn

MIB = 1 << 20


@pytest.fixture(autouse=True)
def fresh_cache():
    fastconv.empty_array_cache()
    previous = fastconv.set_array_cache_limit(512 * MIB)
    yield
    fastconv.set_array_cache_limit(previous)
    fastconv.empty_array_cache()


def in_scope(fn):
    previous = _C.array_cache_enter()
    try:
        return fn()
    finally:
        _C.array_cache_exit(previous)


def test_freed_large_block_is_reused_for_the_same_size():
    def run():
        a = np.empty(2 * MIB, np.uint8)
        address = a.ctypes.data
        del a
        b = np.empty(2 * MIB, np.uint8)
        return address, b.ctypes.data
    before = fastconv.array_cache_info()
    first, second = in_scope(run)
    after = fastconv.array_cache_info()
    assert first == second
    assert after["hits"] == before["hits"] + 1 and after["misses"] == before["misses"] + 1


def test_other_sizes_small_blocks_and_arrays_outside_the_scope_are_not_cached():
    def run():
        a = np.empty(2 * MIB, np.uint8)
        del a
        small = np.empty(1000, np.uint8)
        del small
        return np.empty(3 * MIB, np.uint8)  # another size: a miss, and the 2 MiB block stays kept
    before = fastconv.array_cache_info()
    kept = in_scope(run)
    info = fastconv.array_cache_info()
    assert info["blocks_held"] == 1 and info["bytes_held"] == 2 * MIB
    assert info["misses"] == before["misses"] + 2 and info["hits"] == before["hits"]
    outside = np.empty(2 * MIB, np.uint8)  # default allocator: the kept block is not handed out
    assert fastconv.array_cache_info() == info
    del outside, kept


def test_a_larger_kept_block_is_not_handed_to_a_smaller_request():
    def run():
        a = np.empty(3 * MIB, np.uint8)
        del a
        return np.empty(2 * MIB, np.uint8)
    before = fastconv.array_cache_info()
    small = in_scope(run)
    info = fastconv.array_cache_info()
    assert info["hits"] == before["hits"] and info["bytes_held"] == 3 * MIB
    del small


def test_zeros_inside_the_scope_are_zero_after_a_dirty_block_of_that_size():
    def run():
        a = np.full(MIB, 7, np.float32)
        del a
        return np.zeros(MIB, np.float32), np.empty(MIB, np.float32)
    zeros, reused = in_scope(run)
    assert not zeros.any()
    assert (reused == 7).all()  # np.empty got the kept block (its old contents: nothing was cleared)


def test_limit_bounds_what_is_kept_and_empty_releases_it():
    fastconv.set_array_cache_limit(3 * MIB)

    def run():
        blocks = [np.empty(2 * MIB, np.uint8) for _ in range(3)]
        del blocks
    in_scope(run)
    assert fastconv.array_cache_info()["bytes_held"] == 2 * MIB  # a second 2 MiB block would pass the limit
    assert fastconv.empty_array_cache() == 2 * MIB
    assert fastconv.array_cache_info()["bytes_held"] == 0
    fastconv.set_array_cache_limit(0)
    in_scope(run)
    assert fastconv.array_cache_info()["bytes_held"] == 0


def test_lowering_the_limit_frees_what_is_kept():
    in_scope(lambda: np.empty(2 * MIB, np.uint8))  # freed on return, inside the scope's handler: kept
    assert fastconv.array_cache_info()["bytes_held"] == 2 * MIB
    assert fastconv.set_array_cache_limit(MIB) == 512 * MIB
    assert fastconv.array_cache_info()["bytes_held"] == 0


def test_blocks_freed_on_another_thread():
    arrays = in_scope(lambda: [np.empty(2 * MIB, np.uint8) for _ in range(8)])
    threads = [threading.Thread(target=arrays.pop) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fastconv.array_cache_info()["blocks_held"] == 8


def test_sequential_allocates_through_the_cache_and_results_do_not_change():
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1))
    for _, p, *_ in model.named_parameters():
        p[...] = rng.standard_normal(p.shape).astype(p.dtype) * 0.1
    x = rng.standard_normal((4, 3, 64, 64)).astype(np.float32)
    with fastconv.no_grad():
        first = model.forward(x)
        before = fastconv.array_cache_info()
        del first
        second = model.forward(x)
    after = fastconv.array_cache_info()
    assert after["hits"] > before["hits"]  # the second call reused the first call's blocks
    fastconv.set_array_cache_limit(0)
    with fastconv.no_grad():
        plain = model.forward(x)
    np.testing.assert_array_equal(second, plain)


def test_bad_limits():
    with pytest.raises(TypeError, match="nbytes must be an int"):
        fastconv.set_array_cache_limit(1.5)
    with pytest.raises(TypeError, match="nbytes must be an int"):
        fastconv.set_array_cache_limit(True)
    with pytest.raises(ValueError, match="nbytes must be >= 0, got -1"):
        fastconv.set_array_cache_limit(-1)
