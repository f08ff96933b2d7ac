# Inference plans (included last by _C.pyx): the kernel calls of one inference forward, recorded once and replayed
# by one loop without the GIL.
#
# A small network spends most of an inference call in Python: LeNet-5 at batch 1 runs 10 us of kernels in 80 us.
# While a plan records (InferencePlan.start ... stop), each kernel binding that writes an activation appends its
# C call, with the pointers and descriptors it computed, after running it. Replaying the calls in order with a new
# input does the same work as the Python path, bit for bit, as long as nothing between the kernels computed values
# (fastconv.nn checks that by replaying once over poisoned buffers before it keeps a plan). Pointers into the
# recorded input or into the array that held the returned output are moved to the new input and a fresh output;
# every other pointer (weights, prepared weights, folded batch-norm vectors, activations) stays where it was, the
# plan holding those arrays alive, so a plan keeps all of the network's activations for its input shape: at most
# the byte budget it was made with.

from cpython.pythread cimport PyThread_get_thread_ident
from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_ANY_CONTIGUOUS, PyBUF_WRITABLE
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memset
import time

cdef enum:
    PLAN_CONV = 1
    PLAN_CONV_POOLED = 2
    PLAN_CONV_SPLIT = 3
    PLAN_MAX_POOL = 4
    PLAN_AVG_POOL = 5
    PLAN_GLOBAL_AVG_POOL = 6
    PLAN_LRN = 7
    PLAN_LINEAR = 8
    PLAN_RELU = 9
    PLAN_NPTR = 10
    PLAN_NINT = 12

# where a recorded pointer points: fixed memory, the input, or the output's array
cdef enum:
    PLAN_FIXED = 0
    PLAN_IN_INPUT = 1
    PLAN_IN_OUTPUT = 2

cdef struct plan_call:
    int kind
    int dbl                    # double (1) or float (0) kernels
    char *p[PLAN_NPTR]         # operands, by kind (see _plan_run_call)
    signed char base[PLAN_NPTR]
    int64_t v[PLAN_NINT]       # integer arguments, by kind
    fc_conv2d_desc conv
    fc_pool2d_desc pool
    fc_lrn_desc lrn

cdef object _plan_recorder = None  # the InferencePlan recording, on the thread _plan_thread
cdef unsigned long _plan_thread = 0


def plan_recording():
    """Whether an InferencePlan is recording this thread's kernel calls."""
    return _plan_recorder is not None and PyThread_get_thread_ident() == _plan_thread


def plan_settings():
    """The settings a recorded plan depends on: arch, threads, and the convolution path and tile settings."""
    return (current_arch(), fc_get_num_threads(), fc_conv2d_winograd_mode(), fc_conv2d_winograd_tile(),
            fc_conv2d_direct_mode(), fc_conv2d_direct_layout())


cdef char *_data(object a) except? NULL:
    """The first byte of a contiguous buffer (NULL when it is empty)."""
    cdef Py_buffer view
    PyObject_GetBuffer(a, &view, PyBUF_ANY_CONTIGUOUS)
    cdef char *p = <char *>view.buf if view.len > 0 else NULL
    PyBuffer_Release(&view)
    return p


cdef inline bint _within(const char *p, const char *lo, const char *hi) noexcept nogil:
    return p != NULL and lo <= p and p < hi


cdef inline void _plan_operands(const plan_call *c, Py_ssize_t shift_in, Py_ssize_t shift_out,
                                char **q) noexcept nogil:
    """c's pointers for this replay: those into the recorded input or output moved to the new ones."""
    cdef int s
    for s in range(PLAN_NPTR):
        q[s] = c.p[s]
        if c.base[s] == PLAN_IN_INPUT:
            q[s] = q[s] + shift_in
        elif c.base[s] == PLAN_IN_OUTPUT:
            q[s] = q[s] + shift_out


cdef int _plan_run_call(const fc_context *ctx, const plan_call *c, char **q) noexcept nogil:
    """One recorded call on the operands q (c.p moved to this replay's input and output)."""
    cdef int s, err = FC_OK
    cdef fc_sconv2d_output so[4]
    cdef fc_dconv2d_output do[4]
    cdef int64_t i, j, n, nin, nout
    if c.kind == PLAN_CONV or c.kind == PLAN_CONV_POOLED:
        # x, y, weight, prepared, scale, bias, residual; v: ldy, prepared elements, relu
        if c.dbl:
            if c.kind == PLAN_CONV_POOLED:
                return fc_dconv2d_forward_pooled(ctx, <double *>q[0], <double *>q[1], c.v[0], <double *>q[2],
                                                 <double *>q[3], c.v[1], <double *>q[4], <double *>q[5],
                                                 <double *>q[6], <int>c.v[2], &c.conv)
            return fc_dconv2d_forward_prepared(ctx, <double *>q[0], <double *>q[1], c.v[0], <double *>q[2],
                                               <double *>q[3], c.v[1], <double *>q[4], <double *>q[5],
                                               <double *>q[6], <int>c.v[2], &c.conv)
        if c.kind == PLAN_CONV_POOLED:
            return fc_sconv2d_forward_pooled(ctx, <float *>q[0], <float *>q[1], c.v[0], <float *>q[2],
                                             <float *>q[3], c.v[1], <float *>q[4], <float *>q[5], <float *>q[6],
                                             <int>c.v[2], &c.conv)
        return fc_sconv2d_forward_prepared(ctx, <float *>q[0], <float *>q[1], c.v[0], <float *>q[2], <float *>q[3],
                                           c.v[1], <float *>q[4], <float *>q[5], <float *>q[6], <int>c.v[2],
                                           &c.conv)
    if c.kind == PLAN_CONV_SPLIT:
        # x, -, weight, prepared, scale, bias, -, outputs 0-3; v: outputs, prepared elements, relu, ldy[4], f[4]
        for s in range(<int>c.v[0]):
            so[s].y, so[s].ldy, so[s].f = <float *>q[6 + s], c.v[3 + s], c.v[7 + s]
            do[s].y, do[s].ldy, do[s].f = <double *>q[6 + s], c.v[3 + s], c.v[7 + s]
        if c.dbl:
            return fc_dconv2d_forward_split(ctx, <double *>q[0], do, <int>c.v[0], <double *>q[2], <double *>q[3],
                                            c.v[1], <double *>q[4], <double *>q[5], <int>c.v[2], &c.conv)
        return fc_sconv2d_forward_split(ctx, <float *>q[0], so, <int>c.v[0], <float *>q[2], <float *>q[3], c.v[1],
                                        <float *>q[4], <float *>q[5], <int>c.v[2], &c.conv)
    if c.kind == PLAN_MAX_POOL:
        if c.dbl:
            return fc_dmax_pool2d_forward_values(ctx, <double *>q[0], <double *>q[1], &c.pool)
        return fc_smax_pool2d_forward_values(ctx, <float *>q[0], <float *>q[1], &c.pool)
    if c.kind == PLAN_AVG_POOL:
        if c.dbl:
            return fc_davg_pool2d_forward(ctx, <double *>q[0], <double *>q[1], &c.pool)
        return fc_savg_pool2d_forward(ctx, <float *>q[0], <float *>q[1], &c.pool)
    if c.kind == PLAN_GLOBAL_AVG_POOL:
        if c.dbl:
            return fc_dglobal_avg_pool2d_forward(ctx, <double *>q[0], <double *>q[1], &c.pool)
        return fc_sglobal_avg_pool2d_forward(ctx, <float *>q[0], <float *>q[1], &c.pool)
    if c.kind == PLAN_LRN:
        if c.dbl:
            return fc_dlrn_forward(ctx, <double *>q[0], <double *>q[1], <double *>q[2], &c.lrn)
        return fc_slrn_forward(ctx, <float *>q[0], <float *>q[1], <float *>q[2], &c.lrn)
    if c.kind == PLAN_LINEAR:
        # x, y, weight, bias; v: rows, in features, out features, relu
        if c.dbl:
            return _linear_run(ctx, <double *>q[0], <double *>q[1], <double *>q[2], <double *>q[3], c.v[0], c.v[1],
                               c.v[2], <bint>c.v[3])
        return _linear_run(ctx, <float *>q[0], <float *>q[1], <float *>q[2], <float *>q[3], c.v[0], c.v[1], c.v[2],
                           <bint>c.v[3])
    if c.kind == PLAN_RELU:
        if c.dbl:
            return fc_drelu_forward(ctx, <double *>q[0], <double *>q[1], c.v[0])
        return fc_srelu_forward(ctx, <float *>q[0], <float *>q[1], c.v[0])
    return FC_ERR_ARG


cdef void _plan_record(plan_call *c, tuple operands, tuple written) except *:
    """Append call c to the recording plan (if any). operands: the arrays c's pointers point into (kept alive);
    written: those it writes."""
    if _plan_recorder is not None and PyThread_get_thread_ident() == _plan_thread:
        (<InferencePlan>_plan_recorder)._append(c, operands, written)


# The bindings call these after their kernel ran, when _plan_recorder is set.
cdef void _record_conv(int kind, bint dbl, const void *x, void *y, const void *weight, const void *prepared,
                       const void *scale, const void *bias, const void *residual, int64_t ldy, int64_t elems,
                       bint relu, const fc_conv2d_desc *d, tuple operands, tuple written) except *:
    cdef plan_call c
    memset(&c, 0, sizeof(c))
    c.kind, c.dbl, c.conv = kind, dbl, d[0]
    c.p[0], c.p[1], c.p[2], c.p[3] = <char *>x, <char *>y, <char *>weight, <char *>prepared
    c.p[4], c.p[5], c.p[6] = <char *>scale, <char *>bias, <char *>residual
    c.v[0], c.v[1], c.v[2] = ldy, elems, relu
    _plan_record(&c, operands, written)


cdef void _record_conv_split(bint dbl, const void *x, const void *weight, const void *prepared, int64_t elems,
                             const void *scale, const void *bias, int nout, void **ys, const int64_t *ldys, const int64_t *fs,
                             bint relu, const fc_conv2d_desc *d, tuple operands, tuple written) except *:
    cdef plan_call c
    cdef int s
    memset(&c, 0, sizeof(c))
    c.kind, c.dbl, c.conv = PLAN_CONV_SPLIT, dbl, d[0]
    c.p[0], c.p[2], c.p[3] = <char *>x, <char *>weight, <char *>prepared
    c.p[4], c.p[5] = <char *>scale, <char *>bias
    c.v[0], c.v[1], c.v[2] = nout, elems, relu
    for s in range(nout):
        c.p[6 + s], c.v[3 + s], c.v[7 + s] = <char *>ys[s], ldys[s], fs[s]
    _plan_record(&c, operands, written)


cdef void _record_pool(int kind, bint dbl, const void *x, void *y, const fc_pool2d_desc *d, tuple operands,
                       tuple written) except *:
    cdef plan_call c
    memset(&c, 0, sizeof(c))
    c.kind, c.dbl, c.pool = kind, dbl, d[0]
    c.p[0], c.p[1] = <char *>x, <char *>y
    _plan_record(&c, operands, written)


cdef void _record_lrn(bint dbl, const void *x, void *y, void *scale, const fc_lrn_desc *d, tuple operands,
                      tuple written) except *:
    cdef plan_call c
    memset(&c, 0, sizeof(c))
    c.kind, c.dbl, c.lrn = PLAN_LRN, dbl, d[0]
    c.p[0], c.p[1], c.p[2] = <char *>x, <char *>y, <char *>scale
    _plan_record(&c, operands, written)


cdef void _record_relu(bint dbl, const void *x, void *y, int64_t n, tuple operands, tuple written) except *:
    cdef plan_call c
    memset(&c, 0, sizeof(c))
    c.kind, c.dbl = PLAN_RELU, dbl
    c.p[0], c.p[1], c.v[0] = <char *>x, <char *>y, n
    _plan_record(&c, operands, written)


cdef class InferencePlan:
    """The kernel calls of one inference forward for one input shape, dtype and set of settings.

    ``plan = InferencePlan(x, max_bytes)``; ``plan.start()``; run the forward on x; ``plan.stop()``;
    ``plan.finish(y)`` with the forward's result; then ``plan.run(x2)`` for each new input of x's shape and dtype
    (C-contiguous) returns a new array equal to the forward's. ``plan.usable`` is False (and ``plan.reason`` says
    why) when the recording cannot be replayed: it wrote into its input, its activations passed max_bytes, it
    recorded nothing, or its result does not lie in one array the calls wrote. Not thread-safe: run returns None
    while another thread is replaying the same plan."""
    cdef plan_call *calls
    cdef Py_ssize_t n, cap
    cdef list keep, ranges  # ranges: [lo, hi) addresses of the arrays written, in order
    cdef dict owners
    cdef char *x_lo
    cdef char *x_hi
    cdef char *out_lo
    cdef char *out_hi
    cdef object x_shape, x_dtype, out_shape, out_dtype, view_shape, view_strides
    cdef Py_ssize_t view_offset
    cdef bint view_whole  # the result is its whole array, C-contiguous (maybe in another shape)
    cdef int64_t max_bytes, written_bytes
    cdef bint recording, finished, busy
    cdef public object reason
    cdef public object modules, grad_forwards  # for fastconv.nn: the model's modules, its training-forward count

    def __cinit__(self, x, int64_t max_bytes):
        if not isinstance(x, np.ndarray) or not x.flags.c_contiguous:
            raise TypeError("InferencePlan records a forward on a C-contiguous NumPy array")
        self.calls = NULL
        self.n = self.cap = 0
        self.keep, self.owners, self.ranges = [], {}, []
        cdef Py_ssize_t nbytes = x.nbytes
        self.x_lo = _data(x)
        self.x_hi = self.x_lo + nbytes
        self.x_shape, self.x_dtype = x.shape, x.dtype
        self.max_bytes, self.written_bytes = max_bytes, 0
        self.reason = None

    def __dealloc__(self):
        free(self.calls)

    @property
    def usable(self):
        return self.finished and self.reason is None

    @property
    def num_calls(self):
        return self.n

    @property
    def activation_bytes(self):
        """Bytes of the arrays the recorded calls write (kept by the plan)."""
        return self.written_bytes

    def start(self):
        """Record this thread's kernel calls from now on; False (and nothing recorded) while another plan records
        (one at a time in a process)."""
        global _plan_recorder, _plan_thread
        if self.finished or self.recording:
            raise RuntimeError("this InferencePlan has already recorded")
        if _plan_recorder is not None:
            return False
        self.recording = True
        _plan_recorder, _plan_thread = self, PyThread_get_thread_ident()
        return True

    def stop(self):
        global _plan_recorder
        if _plan_recorder is self:
            _plan_recorder = None
        self.recording = False

    cdef _abandon(self, str reason):
        self.reason = reason
        self.n = 0
        self.keep, self.owners, self.ranges = [], {}, []

    cdef _append(self, plan_call *c, tuple operands, tuple written):
        cdef int s
        cdef char *lo
        cdef Py_ssize_t nbytes
        if self.reason is not None:
            return
        # the activations it reads (x; a convolution's residual) must be the input or written by an earlier call:
        # anything else was computed outside the recorded kernels, and a replay would read it stale
        for s in range(7 if c.kind == PLAN_CONV or c.kind == PLAN_CONV_POOLED else 1):
            if (s == 0 or s == 6) and c.p[s] != NULL and not _within(c.p[s], self.x_lo, self.x_hi) and \
                    not any(lo_w <= <size_t>c.p[s] < hi_w for lo_w, hi_w in self.ranges):
                self._abandon("a kernel reads an array that no recorded kernel wrote (computed outside them)")
                return
        for w in written:
            owner = w
            while isinstance(owner, np.ndarray) and isinstance(owner.base, np.ndarray):
                owner = owner.base
            if not isinstance(owner, np.ndarray) or not owner.flags.c_contiguous or owner.base is not None:
                self._abandon("a kernel wrote into memory that no array owns")
                return
            lo = _data(owner)
            nbytes = owner.nbytes
            if _within(lo, self.x_lo, self.x_hi) or _within(self.x_lo, lo, lo + nbytes):
                self._abandon("the forward writes into its input")
                return
            if id(owner) not in self.owners:
                self.owners[id(owner)] = owner
                self.written_bytes += owner.nbytes
                self.ranges.append((<size_t>lo, <size_t>lo + <size_t>nbytes))
        if self.written_bytes > self.max_bytes:
            self._abandon(f"the activations take more than {self.max_bytes} bytes")
            return
        if self.n == self.cap:
            cap = 16 if self.cap == 0 else 2 * self.cap
            grown = <plan_call *>realloc(self.calls, cap * sizeof(plan_call))
            if grown == NULL:
                raise MemoryError("InferencePlan: no memory for the recorded calls")
            self.calls, self.cap = grown, cap
        self.calls[self.n] = c[0]
        for s in range(PLAN_NPTR):
            self.calls[self.n].base[s] = PLAN_FIXED
        self.n += 1
        self.keep.append(operands)

    def finish(self, y):
        """End the recording with y, the forward's result: the array that holds it is the one each replay makes
        anew."""
        cdef Py_ssize_t i
        cdef int s
        self.stop()
        self.finished = True
        if self.reason is not None:
            return
        if self.n == 0:
            self._abandon("the forward ran no kernel that a plan records")
            return
        if not isinstance(y, np.ndarray):
            self._abandon(f"the forward returned {type(y).__name__}, not one array")
            return
        owner = y
        while isinstance(owner.base, np.ndarray):
            owner = owner.base
        if owner.base is not None or not owner.flags.c_contiguous or id(owner) not in self.owners:
            self._abandon("the result is not an array the recorded kernels wrote")
            return
        cdef Py_ssize_t nbytes = owner.nbytes
        self.out_lo = _data(owner)
        self.out_hi = self.out_lo + nbytes
        self.out_shape, self.out_dtype = owner.shape, owner.dtype
        self.view_shape, self.view_strides = y.shape, y.strides
        # the result may be a strided view of its array (no buffer of its own): its address from the interface
        self.view_offset = y.__array_interface__["data"][0] - <size_t>self.out_lo if y.size else 0
        self.view_whole = y.flags.c_contiguous and y.size == owner.size and self.view_offset == 0
        for i in range(self.n):
            for s in range(PLAN_NPTR):
                if _within(self.calls[i].p[s], self.x_lo, self.x_hi):
                    self.calls[i].base[s] = PLAN_IN_INPUT
                elif _within(self.calls[i].p[s], self.out_lo, self.out_hi):
                    self.calls[i].base[s] = PLAN_IN_OUTPUT

    def poison(self):
        """Fill every array the calls write with NaN (a replay must write each before it reads it), but the one
        holding the recorded result, which replays do not touch."""
        for owner in self.owners.values():  # whole arrays: a kernel may write only some channels of one
            if owner.dtype.kind == "f" and not (owner.size and _within(_data(owner), self.out_lo, self.out_hi)):
                owner.fill(np.nan)

    def run(self, x, bint fill_output=False):
        """The recorded forward on x (x's shape and dtype as recorded, C-contiguous): a new array, or None while
        another thread replays this plan. fill_output: NaN-fill the new output before the calls (for checks)."""
        if not self.usable:
            raise RuntimeError(f"this InferencePlan cannot run: {self.reason or 'not finished'}")
        if not isinstance(x, np.ndarray) or x.shape != self.x_shape or x.dtype != self.x_dtype or \
                not x.flags.c_contiguous:
            raise ValueError(f"the plan was recorded for a C-contiguous {self.x_dtype} input of shape "
                             f"{self.x_shape}, got {getattr(x, 'dtype', type(x).__name__)} "
                             f"{getattr(x, 'shape', '')}")
        if self.busy:
            return None
        out = np.empty(self.out_shape, self.out_dtype)
        if fill_output:
            out.fill(np.nan)
        cdef char *x_new = _data(x)
        cdef char *out_new = _data(out)
        cdef Py_ssize_t shift_in = x_new - self.x_lo if x_new != NULL else 0
        cdef Py_ssize_t shift_out = out_new - self.out_lo if out_new != NULL else 0
        cdef fc_context ctx = fc_context_default()
        cdef char *q[PLAN_NPTR]
        cdef Py_ssize_t i
        cdef int err = FC_OK
        self.busy = True
        try:
            with nogil:
                for i in range(self.n):
                    _plan_operands(&self.calls[i], shift_in, shift_out, q)
                    err = _plan_run_call(&ctx, &self.calls[i], q)
                    if err != FC_OK:
                        break
        finally:
            self.busy = False
        check(err)
        if self.view_shape == self.out_shape and self.view_offset == 0:
            return out
        return np.ndarray(self.view_shape, self.out_dtype, buffer=out, offset=self.view_offset,
                          strides=self.view_strides)


    def call_times(self, x, int repeats=100):
        """[(kind, median seconds)] of each recorded call on input x, each call timed alone `repeats` times (in
        order, the calls before it run first): where a replay spends its time. A convolution's kind also names
        its input shape, filters, kernel and stride."""
        names = {PLAN_CONV: "conv", PLAN_CONV_POOLED: "conv_pooled", PLAN_CONV_SPLIT: "conv_split",
                 PLAN_MAX_POOL: "max_pool", PLAN_AVG_POOL: "avg_pool", PLAN_GLOBAL_AVG_POOL: "global_avg_pool",
                 PLAN_LRN: "lrn", PLAN_LINEAR: "linear", PLAN_RELU: "relu"}
        self.run(x)  # checks x; warms up
        out = np.empty(self.out_shape, self.out_dtype)
        cdef Py_ssize_t shift_in = _data(x) - self.x_lo, shift_out = _data(out) - self.out_lo
        cdef fc_context ctx = fc_context_default()
        cdef char *q[PLAN_NPTR]
        cdef Py_ssize_t i
        cdef int r
        cdef const fc_conv2d_desc *d
        result = []
        for i in range(self.n):
            _plan_operands(&self.calls[i], shift_in, shift_out, q)
            samples = []
            for r in range(repeats):
                t0 = time.perf_counter()
                check(_plan_run_call(&ctx, &self.calls[i], q))
                samples.append(time.perf_counter() - t0)
            kind = names[self.calls[i].kind]
            if self.calls[i].kind in (PLAN_CONV, PLAN_CONV_POOLED, PLAN_CONV_SPLIT):
                d = &self.calls[i].conv
                kind += f" {d.n}x{d.c}x{d.h}x{d.w} -> {d.f} {d.kh}x{d.kw}/{d.sh}"
            result.append((kind, float(np.median(samples))))
        return result


cdef struct _parts_job:
    const fc_context *ctx
    const plan_call **calls   # each part's recorded calls
    const Py_ssize_t *ncalls
    const Py_ssize_t *shift_in
    const Py_ssize_t *shift_out


cdef int _run_part(void *arg, int part) noexcept nogil:
    cdef _parts_job *job = <_parts_job *>arg
    cdef char *q[PLAN_NPTR]
    cdef Py_ssize_t i
    cdef int err
    for i in range(job.ncalls[part]):
        _plan_operands(&job.calls[part][i], job.shift_in[part], job.shift_out[part], q)
        err = _plan_run_call(job.ctx, &job.calls[part][i], q)
        if err != FC_OK:
            return err
    return FC_OK


cdef class SplitInferencePlan:
    """A batch's inference forward as one InferencePlan per thread, each recorded with one-thread kernels on its
    share of the images (the first dimension) and replayed on its own thread, all at once.

    For a small network the thread team of each layer costs more than it saves (a LeNet-5 layer at batch 8 runs in
    microseconds, and every layer would wake the team and wait for it); splitting the images instead keeps both
    threads busy through the whole forward with no wait between layers. Each image's bits are those of the
    one-thread forward of its share. ``SplitInferencePlan(parts)``: usable plans recorded on consecutive equal
    shares whose outputs are whole arrays with the images first (ValueError otherwise); ``run(x)`` takes the
    whole batch."""
    cdef list parts_list
    cdef object x_shape, x_dtype, out_shape
    cdef bint busy
    cdef public object modules, grad_forwards  # for fastconv.nn, as InferencePlan's

    def __init__(self, parts):
        parts = list(parts)
        if not parts or not all(isinstance(part, InferencePlan) and part.usable for part in parts):
            raise ValueError("SplitInferencePlan takes one or more usable InferencePlans")
        if len(parts) > 64:
            raise ValueError(f"a SplitInferencePlan has at most 64 parts, got {len(parts)}")
        cdef InferencePlan first = parts[0], p
        for p in parts:
            if p.x_shape != first.x_shape or p.x_dtype != first.x_dtype or p.out_shape != first.out_shape or \
                    p.out_dtype != first.out_dtype:
                raise ValueError("the parts of a SplitInferencePlan must be recorded on the same input shape")
            # the result may view its array in another shape (a dense layer's (n, f, 1, 1) output as (n, f))
            if not p.view_whole or len(p.x_shape) < 1 or len(p.view_shape) < 1 or p.view_shape[0] != p.x_shape[0]:
                raise ValueError("a SplitInferencePlan needs results that are whole C-contiguous arrays, images "
                                 "first")
        self.parts_list = parts
        self.x_shape = (len(parts) * first.x_shape[0],) + tuple(first.x_shape[1:])
        self.x_dtype = first.x_dtype
        self.out_shape = (len(parts) * first.view_shape[0],) + tuple(first.view_shape[1:])

    @property
    def usable(self):
        return True

    @property
    def parts(self):
        return list(self.parts_list)

    @property
    def num_calls(self):
        return sum(p.num_calls for p in self.parts_list)

    @property
    def activation_bytes(self):
        return sum(p.activation_bytes for p in self.parts_list)

    def run(self, x):
        """The forward on x (the whole batch, C-contiguous, of the recorded dtype): a new array, or None while
        another thread replays this plan."""
        if not isinstance(x, np.ndarray) or x.shape != self.x_shape or x.dtype != self.x_dtype or \
                not x.flags.c_contiguous:
            raise ValueError(f"the plan was recorded for a C-contiguous {self.x_dtype} input of shape "
                             f"{self.x_shape}, got {getattr(x, 'dtype', type(x).__name__)} "
                             f"{getattr(x, 'shape', '')}")
        if self.busy:
            return None
        cdef int nparts = len(self.parts_list), t
        cdef InferencePlan p = self.parts_list[0]
        out = np.empty(self.out_shape, p.out_dtype)
        cdef char *x_new = _data(x)
        cdef char *out_new = _data(out)
        cdef Py_ssize_t x_step = x.nbytes // nparts, out_step = out.nbytes // nparts
        cdef const plan_call *calls[64]
        cdef Py_ssize_t ncalls[64]
        cdef Py_ssize_t shift_in[64]
        cdef Py_ssize_t shift_out[64]
        for t in range(nparts):
            p = self.parts_list[t]
            calls[t], ncalls[t] = p.calls, p.n
            shift_in[t] = x_new + t * x_step - p.x_lo
            shift_out[t] = out_new + t * out_step - p.out_lo
        cdef fc_context ctx = fc_context_default()
        ctx.num_threads = 1  # each part runs the one-thread kernels it was recorded with
        cdef _parts_job job
        job.ctx, job.calls, job.ncalls, job.shift_in, job.shift_out = &ctx, calls, ncalls, shift_in, shift_out
        cdef int err
        self.busy = True
        try:
            with nogil:
                err = fc_run_parts(nparts, _run_part, &job)
        finally:
            self.busy = False
        check(err)
        return out


# ---------------------------------------------------------------- fully connected layers

cdef int _linear_run(const fc_context *ctx, const real *x, real *y, const real *w, const real *bias, int64_t n,
                     int64_t nin, int64_t nout, bint relu) noexcept nogil:
    """y (n, nout) = x (n, nin) w^T (+ bias), then max(., 0) when relu. The bias joins the finished sum, as in a
    convolution's epilogue: a layer run as a dense convolution (Linear under prepare_inference) gives the same
    bits."""
    cdef int64_t i, j
    cdef int err
    cdef real v
    if n == 0 or nout == 0:
        return FC_OK
    if real is float:
        err = fc_sgemm(ctx, n, nout, nin, 1, x, nin, 1, w, 1, nin, 0, y, nout, 1)
    else:
        err = fc_dgemm(ctx, n, nout, nin, 1, x, nin, 1, w, 1, nin, 0, y, nout, 1)
    if err != FC_OK or (bias == NULL and not relu):
        return err
    for i in range(n):
        for j in range(nout):
            v = y[i * nout + j] + bias[j] if bias != NULL else y[i * nout + j]
            y[i * nout + j] = 0 if relu and v < 0 else v  # NaN stays NaN, as in the ReLU kernel
    return FC_OK


def linear_forward(const real[:, ::1] x, real[:, ::1] y, const real[:, ::1] weight, const real[::1] bias,
                   bint relu=False):
    """y = x weight^T + bias (bias may be None), then max(., 0) when relu. Shapes checked by fastconv.functional."""
    if y.shape[0] != x.shape[0] or y.shape[1] != weight.shape[0] or weight.shape[1] != x.shape[1] or \
            (bias is not None and bias.shape[0] != weight.shape[0]):
        raise ValueError("linear_forward: x, weight, bias and y disagree in shape")
    cdef plan_call c
    cdef fc_context ctx = fc_context_default()
    cdef int err
    if y.shape[0] == 0 or y.shape[1] == 0:
        return
    cdef const real *px = &x[0, 0] if x.shape[1] > 0 else NULL
    cdef const real *pw = &weight[0, 0] if weight.shape[1] > 0 else NULL
    cdef const real *pb = &bias[0] if bias is not None else NULL
    with nogil:
        err = _linear_run(&ctx, px, &y[0, 0], pw, pb, x.shape[0], x.shape[1], y.shape[1], relu)
    check(err)
    if _plan_recorder is not None:
        memset(&c, 0, sizeof(c))
        c.kind, c.dbl = PLAN_LINEAR, real is double
        c.p[0], c.p[1], c.p[2], c.p[3] = <char *>px, <char *>&y[0, 0], <char *>pw, <char *>pb
        c.v[0], c.v[1], c.v[2], c.v[3] = x.shape[0], x.shape[1], y.shape[1], relu
        _plan_record(&c, (x.base, y.base, weight.base, None if bias is None else bias.base), (y.base,))
