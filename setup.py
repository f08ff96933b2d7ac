"""Build of the one extension module, fastconv._C.

pyproject.toml says everything it can; this file says what it cannot: which C files go into the extension, the
per-ISA compile flags of the micro-kernel files (each built with only its own flags, everything else at the
baseline ISA), and whether the compiler supports OpenMP.
"""
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from glob import glob

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"
IS_X86_64 = platform.machine().lower() in ("x86_64", "amd64") and sys.platform != "win32"

# Micro-kernel files and the only flags they are compiled with.
ISA_SOURCES = {
    "AVX2": (os.path.join(CSRC, "arch", "avx2", "gemm_avx2.c"), ["-mavx2", "-mfma"]),
    "AVX512": (os.path.join(CSRC, "arch", "avx512", "gemm_avx512.c"), ["-mavx512f", "-mavx2", "-mfma"]),
}
# -fno-math-errno: sqrt and friends need not set errno, so their loops vectorize (LRN's s^-0.75 ran one scalar
# sqrtf at a time). Results are unchanged: IEEE sqrt is correctly rounded either way; this is not fast-math.
BASE_CFLAGS = ["-O3", "-std=c11", "-fno-strict-aliasing", "-fno-math-errno", "-Wall", "-Wno-unused-function"]


def compiler_accepts(compiler, flags, source):
    """Compile and link `source` with `flags`; True when that works."""
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "probe.c")
        with open(path, "w") as f:
            f.write(source)
        objs = compiler.compile([path], output_dir=tmp, extra_postargs=flags)
        compiler.link_executable(objs, os.path.join(tmp, "probe"), extra_postargs=flags)
        return True
    except Exception:
        return False
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


OPENMP_PROBE = """
#include <omp.h>
int main(void) { int n = 0;
#pragma omp parallel reduction(+:n)
n += 1;
return n > 0 ? 0 : 1; }
"""


class BuildExt(build_ext):
    def build_extensions(self):
        compiler = self.compiler
        use_openmp = os.environ.get("FASTCONV_NO_OPENMP", "") == "" and compiler_accepts(
            compiler, ["-fopenmp"], OPENMP_PROBE)
        print(f"fastconv: OpenMP {'enabled' if use_openmp else 'NOT available: building serial kernels'}")
        for ext in self.extensions:
            ext.extra_compile_args += BASE_CFLAGS
            if use_openmp:
                ext.extra_compile_args.append("-fopenmp")
                ext.extra_link_args.append("-fopenmp")
            if IS_X86_64:
                for name, (src, flags) in ISA_SOURCES.items():
                    macros = [("FC_BUILD_" + name, "1")]
                    objs = compiler.compile([src], output_dir=self.build_temp, include_dirs=ext.include_dirs,
                                            extra_postargs=BASE_CFLAGS + ["-fPIC"] + flags,
                                            depends=ext.depends)
                    ext.extra_objects += objs
                    ext.define_macros += macros
        super().build_extensions()


c_sources = sorted(glob(os.path.join(CSRC, "*.c")))
# Templates and headers: a change to any of them rebuilds the C files (setuptools only watches .c timestamps).
# The per-ISA files are compiled apart (BuildExt) and linked in as objects: listing them here makes a change to one
# of them relink the extension too.
c_depends = sorted(glob(os.path.join(CSRC, "*.inc")) + glob(os.path.join(CSRC, "include", "fastconv", "*.h")) +
                   glob(os.path.join(CSRC, "arch", "*.h")) + [src for src, _ in ISA_SOURCES.values()] +
                   [os.path.join("fastconv", "_array_cache.h")])
ext = Extension(
    "fastconv._C",
    sources=[os.path.join("fastconv", "_C.pyx")] + c_sources,
    include_dirs=[os.path.join(CSRC, "include"), CSRC, numpy.get_include()],
    define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
    extra_compile_args=[],
    extra_link_args=[],
    depends=c_depends,
)

setup(
    ext_modules=cythonize([ext], language_level=3, compiler_directives={
        "boundscheck": False, "wraparound": False, "cdivision": True, "embedsignature": True}),
    cmdclass={"build_ext": BuildExt},
)
