/* A NumPy data allocator that keeps large freed blocks for reuse (included by _C.pyx).
 *
 * A network's forward allocates the same activation sizes call after call. Through malloc each large block is a
 * fresh mmap or a trimmed heap top, so every call faults its pages in again, and the kernel zeroes each one:
 * ResNet-50 at batch 8 took ~2,800 page faults per forward, 6 % of its time on 1 and 2 threads. This handler
 * (NumPy's PyDataMem_Handler, installed for a scope by fastconv.nn's containers) hands a freed block of at least
 * FC_CACHE_MIN_BYTES back to the next request of exactly its size; smaller blocks, calloc (np.zeros keeps its
 * lazily zeroed pages) and realloc go to the C library. At most `limit` bytes are kept; the rest is freed. */
#ifndef FASTCONV_ARRAY_CACHE_H
#define FASTCONV_ARRAY_CACHE_H

#include <Python.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include <numpy/arrayobject.h>

#define FC_CACHE_MIN_BYTES ((size_t)1 << 20)
#define FC_CACHE_SLOTS 256

static struct {
    atomic_flag lock;         /* blocks can be freed from any thread */
    size_t limit, held;       /* bytes allowed, bytes kept */
    size_t hits, misses;      /* large requests served from the cache / from malloc */
    int count;
    void *ptr[FC_CACHE_SLOTS];
    size_t size[FC_CACHE_SLOTS];
} fc_array_cache = {ATOMIC_FLAG_INIT, (size_t)512 << 20, 0, 0, 0, 0, {0}, {0}};

static void fc_cache_lock(void) {
    while (atomic_flag_test_and_set_explicit(&fc_array_cache.lock, memory_order_acquire)) {
    }
}

static void fc_cache_unlock(void) { atomic_flag_clear_explicit(&fc_array_cache.lock, memory_order_release); }

static void *fc_cache_malloc(void *ctx, size_t size) {
    (void)ctx;
    if (size >= FC_CACHE_MIN_BYTES) {
        void *p = NULL;
        fc_cache_lock();
        for (int i = fc_array_cache.count - 1; i >= 0; i--) /* the most recently freed first: warmest in cache */
            if (fc_array_cache.size[i] == size) {
                p = fc_array_cache.ptr[i];
                fc_array_cache.held -= size;
                fc_array_cache.count--;
                fc_array_cache.ptr[i] = fc_array_cache.ptr[fc_array_cache.count];
                fc_array_cache.size[i] = fc_array_cache.size[fc_array_cache.count];
                break;
            }
        if (p) fc_array_cache.hits++;
        else fc_array_cache.misses++;
        fc_cache_unlock();
        if (p) return p;
    }
    return malloc(size ? size : 1);
}

static void *fc_cache_calloc(void *ctx, size_t nelem, size_t elsize) {
    (void)ctx;
    return calloc(nelem ? nelem : 1, elsize ? elsize : 1);
}

static void *fc_cache_realloc(void *ctx, void *ptr, size_t new_size) {
    (void)ctx;
    return realloc(ptr, new_size ? new_size : 1);
}

static void fc_cache_free(void *ctx, void *ptr, size_t size) {
    (void)ctx;
    if (!ptr) return;
    if (size >= FC_CACHE_MIN_BYTES) {
        int kept = 0;
        fc_cache_lock();
        if (fc_array_cache.count < FC_CACHE_SLOTS && fc_array_cache.held <= fc_array_cache.limit &&
            size <= fc_array_cache.limit - fc_array_cache.held) {
            fc_array_cache.ptr[fc_array_cache.count] = ptr;
            fc_array_cache.size[fc_array_cache.count] = size;
            fc_array_cache.count++;
            fc_array_cache.held += size;
            kept = 1;
        }
        fc_cache_unlock();
        if (kept) return;
    }
    free(ptr);
}

/* Frees every kept block; returns the bytes released. */
static size_t fc_array_cache_clear(void) {
    void *blocks[FC_CACHE_SLOTS];
    int n;
    size_t bytes;
    fc_cache_lock();
    n = fc_array_cache.count;
    bytes = fc_array_cache.held;
    memcpy(blocks, fc_array_cache.ptr, sizeof(void *) * (size_t)n);
    fc_array_cache.count = 0;
    fc_array_cache.held = 0;
    fc_cache_unlock();
    for (int i = 0; i < n; i++) free(blocks[i]);
    return bytes;
}

/* Sets the limit (blocks kept beyond it are freed); returns the previous one. */
static size_t fc_array_cache_set_limit(size_t limit) {
    size_t previous;
    int over;
    fc_cache_lock();
    previous = fc_array_cache.limit;
    fc_array_cache.limit = limit;
    over = fc_array_cache.held > limit; /* read under the lock: another thread may be freeing into the cache */
    fc_cache_unlock();
    if (over) fc_array_cache_clear();
    return previous;
}

static void fc_array_cache_stats(size_t *held, size_t *count, size_t *hits, size_t *misses, size_t *limit) {
    fc_cache_lock();
    *held = fc_array_cache.held;
    *count = (size_t)fc_array_cache.count;
    *hits = fc_array_cache.hits;
    *misses = fc_array_cache.misses;
    *limit = fc_array_cache.limit;
    fc_cache_unlock();
}

static PyDataMem_Handler fc_array_cache_handler = {
    "fastconv_array_cache",
    1,
    {NULL, fc_cache_malloc, fc_cache_calloc, fc_cache_realloc, fc_cache_free},
};

/* NumPy's C API table for this module (this header is its only user), then the handler as the capsule
 * PyDataMem_SetHandler takes. NULL with an exception set on failure. */
static PyObject *fc_array_cache_capsule(void) {
    if (PyArray_API == NULL && _import_array() < 0) return NULL;
    return PyCapsule_New(&fc_array_cache_handler, "mem_handler", NULL);
}

/* Installs handler (a capsule from fc_array_cache_capsule or one PyDataMem_SetHandler returned) for the current
 * context; returns the previous one (a new reference), NULL with an exception set on failure. */
static PyObject *fc_array_cache_set_handler(PyObject *handler) { return PyDataMem_SetHandler(handler); }

#endif
