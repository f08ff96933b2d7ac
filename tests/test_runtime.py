"""The runtime: kernel-set dispatch, the thread count and where it comes from, threadpoolctl, fork, `fastconv info`.

Tests that depend on environment variables read at import run in a fresh interpreter (sys.executable) with this
process's environment, the package's own directory first on PYTHONPATH, and a temporary working directory.
"""
import io
import multiprocessing
import os
import subprocess
import sys

import numpy as np
import pytest

import fastconv
from fastconv import _C

PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fastconv.__file__)))
BUILT_ARCHS = [a["name"] for a in _C.archs()]


def run_python(tmp_path, code=None, args=(), **env_overrides):
    """Run `python -c code` (or `python *args`) in a clean subprocess; returns the CompletedProcess.

    The child inherits our environment minus the variables fastconv reads at import (FASTCONV_ARCH,
    OMP_NUM_THREADS, GOMP_SPINCOUNT, OMP_WAIT_POLICY), plus `env_overrides`, with this checkout first on
    PYTHONPATH."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("FASTCONV_ARCH", "OMP_NUM_THREADS", "GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env["PYTHONPATH"] = os.pathsep.join([PACKAGE_ROOT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                          if p])
    env.update(env_overrides)
    argv = [sys.executable, "-c", code] if code is not None else [sys.executable, *args]
    return subprocess.run(argv, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------------------------------ arch dispatch

def test_available_archs():
    archs = fastconv.available_archs()
    assert archs[0] == "ref"  # the portable kernels run everywhere
    assert set(archs) <= set(BUILT_ARCHS) <= {"ref", "avx2", "avx512"}
    assert fastconv.get_arch() in archs
    cpu = _C.cpu_features()
    assert ("avx2" in archs) == ("avx2" in BUILT_ARCHS and cpu["avx2_fma"])
    assert ("avx512" in archs) == ("avx512" in BUILT_ARCHS and cpu["avx512f"])


def test_default_arch_is_the_best_available():
    if os.environ.get("FASTCONV_ARCH"):
        pytest.skip("FASTCONV_ARCH chose the kernel set of this process")
    assert fastconv.get_arch() == fastconv.available_archs()[-1] == _C.best_arch()


@pytest.mark.parametrize("name", fastconv.available_archs())
def test_set_arch_switches_and_returns_previous(name):
    original = fastconv.get_arch()
    try:
        assert fastconv.set_arch(name) == original
        assert fastconv.get_arch() == name
        assert fastconv.set_arch(original) == name
    finally:
        fastconv.set_arch(original)
    assert fastconv.get_arch() == original


def test_set_arch_errors_leave_the_selection_alone():
    original = fastconv.get_arch()
    with pytest.raises(ValueError, match=r"unknown fastconv arch 'sse9'.*'ref'"):
        fastconv.set_arch("sse9")
    for bad in (None, 2, b"avx2", ["avx2"]):
        with pytest.raises(TypeError, match=r"arch must be a str"):
            fastconv.set_arch(bad)
    for name in set(BUILT_ARCHS) - set(fastconv.available_archs()):
        with pytest.raises(ValueError, match=r"not supported by this CPU"):
            fastconv.set_arch(name)
    assert fastconv.get_arch() == original


@pytest.mark.parametrize("name", BUILT_ARCHS)
def test_fastconv_arch_environment_variable(tmp_path, name):
    proc = run_python(tmp_path, "import fastconv; print(fastconv.get_arch()); fastconv.show_config()",
                      FASTCONV_ARCH=name)
    if name in fastconv.available_archs():
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines()[0] == name
        assert f"chosen:    {name} (FASTCONV_ARCH)" in proc.stdout
    else:
        assert proc.returncode == 1 and "ImportError" in proc.stderr and "not supported" in proc.stderr


def test_unknown_fastconv_arch_is_a_clear_import_error(tmp_path):
    proc = run_python(tmp_path, "import fastconv", FASTCONV_ARCH="neon")
    assert proc.returncode == 1, (proc.returncode, proc.stderr)  # an exception, not a signal
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError: FASTCONV_ARCH='neon'") and "unknown fastconv arch" in last, proc.stderr


# ------------------------------------------------------------------------------------------ threads

SPIN_PROBE = "import os, fastconv; print(os.environ.get('GOMP_SPINCOUNT'))"


def test_short_openmp_spin_by_default(tmp_path):
    proc = run_python(tmp_path, SPIN_PROBE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "10000"


@pytest.mark.parametrize("user_env, expected", [(dict(GOMP_SPINCOUNT="5"), "5"),
                                                (dict(OMP_WAIT_POLICY="active"), "None")])
def test_user_openmp_wait_settings_win(tmp_path, user_env, expected):
    proc = run_python(tmp_path, SPIN_PROBE, **user_env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == expected


def test_omp_num_threads_sets_the_count(tmp_path):
    proc = run_python(tmp_path, "import fastconv; print(fastconv.get_num_threads()); fastconv.show_config()",
                      OMP_NUM_THREADS="1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0] == "1"
    assert "threads:   1 (from OMP_NUM_THREADS" in proc.stdout


def test_default_thread_count_is_the_cpus_available(tmp_path):
    proc = run_python(tmp_path, "import fastconv; print(fastconv.get_num_threads()); fastconv.show_config()")
    assert proc.returncode == 0, proc.stderr
    if not _C.have_openmp():
        pytest.skip("built without OpenMP: always 1 thread")
    assert int(proc.stdout.splitlines()[0]) == _C.cpu_count()
    assert "(from default (CPUs available)" in proc.stdout


def test_set_num_threads_returns_previous_and_sets():
    original = fastconv.get_num_threads()
    try:
        assert fastconv.set_num_threads(1) == original
        assert fastconv.get_num_threads() == 1
        assert fastconv.set_num_threads(np.int64(2)) == 1  # numpy integers are integers
        assert fastconv.get_num_threads() == (2 if _C.have_openmp() else 1)
        assert "set_num_threads" in _C.num_threads_source() or not _C.have_openmp()
    finally:
        fastconv.set_num_threads(original)
    assert fastconv.get_num_threads() == original


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), ("2", TypeError),
                                        (None, TypeError), (True, TypeError), (np.float32(2), TypeError)])
def test_set_num_threads_rejects(bad, error):
    original = fastconv.get_num_threads()
    with pytest.raises(error, match=r"number of threads must be"):
        fastconv.set_num_threads(bad)
    with pytest.raises(error, match=r"number of threads must be"):
        with fastconv.threads(bad):
            pass
    assert fastconv.get_num_threads() == original


@pytest.mark.skipif(not _C.have_openmp(), reason="built without OpenMP: the count is always 1")
def test_threads_context_manager_restores_even_on_error():
    original = fastconv.get_num_threads()
    with fastconv.threads(1):
        assert fastconv.get_num_threads() == 1
        with fastconv.threads(3):
            assert fastconv.get_num_threads() == 3
        assert fastconv.get_num_threads() == 1
    assert fastconv.get_num_threads() == original
    with pytest.raises(RuntimeError, match="inside"):
        with fastconv.threads(1):
            raise RuntimeError("inside")
    assert fastconv.get_num_threads() == original


@pytest.mark.skipif(not _C.have_openmp(), reason="built without OpenMP: the count is always 1")
def test_threadpoolctl_sees_and_limits_fastconv():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    original = fastconv.get_num_threads()
    with fastconv.threads(2):
        ours = [info for info in threadpoolctl.threadpool_info() if info["internal_api"] == "fastconv"]
        assert len(ours) == 1
        assert ours[0]["num_threads"] == 2 and ours[0]["version"] == fastconv.__version__
        assert ours[0]["user_api"] == "blas"
        with threadpoolctl.threadpool_limits(1):
            assert fastconv.get_num_threads() == 1
        assert fastconv.get_num_threads() == 2
        with threadpoolctl.threadpool_limits(limits=1, user_api="blas"):
            assert fastconv.get_num_threads() == 1
        assert fastconv.get_num_threads() == 2
    assert fastconv.get_num_threads() == original


# ------------------------------------------------------------------------------------------ fork

FORK_SHAPE = (200, 300, 100)  # M*N*K = 6e6 > 2^20: the parent runs it on 2 threads


def _fork_operands():
    rng = np.random.default_rng(7)
    m, n, k = FORK_SHAPE
    return rng.standard_normal((m, k)), rng.standard_normal((k, n))


def _gemm_in_child(scale):
    a, b = _fork_operands()
    return fastconv.get_num_threads(), _C.num_threads_source(), fastconv.gemm(scale * a, b)


@pytest.mark.skipif("fork" not in multiprocessing.get_all_start_methods(), reason="no fork on this platform")
@pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")
def test_forked_children_run_gemm_after_a_multithreaded_parent():
    """GNU OpenMP's pool does not survive fork: children of a parent that ran a parallel region must still finish
    (they fall back to 1 thread) and compute the same results."""
    a, b = _fork_operands()
    with fastconv.threads(2):
        expected = [fastconv.gemm(scale * a, b) for scale in (1.0, 2.0, 3.0, 4.0)]
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map_async(_gemm_in_child, [1.0, 2.0, 3.0, 4.0]).get(timeout=60)
    for (nthreads, source, got), want in zip(results, expected):
        if _C.have_openmp():
            assert nthreads == 1 and "fork" in source
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


# ------------------------------------------------------------------------------------------ configuration report

def _check_config_text(text):
    assert f"fastconv {fastconv.__version__}" in text
    for name in BUILT_ARCHS:
        assert name in text
    assert "OpenMP" in text and "threads" in text


def test_show_config_in_process():
    buf = io.StringIO()
    with fastconv.threads(1):
        fastconv.show_config(file=buf)
    text = buf.getvalue()
    _check_config_text(text)
    assert f"chosen:    {fastconv.get_arch()} " in text
    assert "threads:   1 (from set_num_threads" in text or not _C.have_openmp()


def test_fastconv_info_command(tmp_path):
    proc = run_python(tmp_path, args=["-m", "fastconv", "info"])
    assert proc.returncode == 0, proc.stderr
    _check_config_text(proc.stdout)


def test_fastconv_command_without_arguments_prints_help(tmp_path):
    proc = run_python(tmp_path, args=["-m", "fastconv"])
    assert proc.returncode == 2
    assert "info" in proc.stdout
