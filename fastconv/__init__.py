"""fastconv: a small, fast CPU engine for convolutional networks on NumPy arrays (NCHW).

    >>> import fastconv, numpy as np
    >>> c = fastconv.gemm(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32))
    >>> fastconv.show_config()          # kernels, CPU features, OpenMP, threads
    >>> fastconv.save(model, "net.safetensors"); model = fastconv.load("net.safetensors")   # fastconv.io
"""
__version__ = "0.1.0"

from ._runtime import (array_cache_info, available_archs, empty_array_cache, get_arch, get_num_threads,
                       set_arch, set_array_cache_limit, set_num_threads, show_config, threads)
from .functional import gemm
from .nn import no_grad

__all__ = ["__version__", "available_archs", "get_arch", "set_arch", "get_num_threads", "set_num_threads",
           "threads", "show_config", "gemm", "no_grad", "save", "load", "array_cache_info", "empty_array_cache",
           "set_array_cache_limit"]


def __getattr__(name):
    # save/load live in fastconv.io, imported on first use so that `import fastconv` stays light
    if name in ("save", "load"):
        from . import io
        return getattr(io, name)
    raise AttributeError(f"module 'fastconv' has no attribute {name!r}")
