# The caching NumPy allocator of _array_cache.h (included by _C.pyx).

cdef extern from "_array_cache.h":
    object fc_array_cache_capsule()
    object fc_array_cache_set_handler(object handler)
    size_t fc_array_cache_clear() nogil
    size_t fc_array_cache_set_limit(size_t limit) nogil
    void fc_array_cache_stats(size_t *held, size_t *count, size_t *hits, size_t *misses, size_t *limit) nogil

_ARRAY_CACHE_HANDLER = fc_array_cache_capsule()


def array_cache_enter():
    """Make NumPy allocate through the array cache in the current context; returns the handler to restore."""
    return fc_array_cache_set_handler(_ARRAY_CACHE_HANDLER)


def array_cache_exit(previous):
    """Restore the handler array_cache_enter returned."""
    fc_array_cache_set_handler(previous)


def array_cache_clear():
    """Free every block the cache keeps; returns the bytes released."""
    return fc_array_cache_clear()


def array_cache_set_limit(size_t limit):
    """Keep at most `limit` bytes of freed blocks; returns the previous limit."""
    return fc_array_cache_set_limit(limit)


def array_cache_stats():
    cdef size_t held, count, hits, misses, limit
    fc_array_cache_stats(&held, &count, &hits, &misses, &limit)
    return {"bytes_held": held, "blocks_held": count, "hits": hits, "misses": misses, "limit": limit}
