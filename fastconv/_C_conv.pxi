# Convolution bindings (included by _C.pyx).

cdef extern from "fastconv/conv.h" nogil:
    ctypedef struct fc_conv2d_desc:
        int64_t n, c, h, w, f, kh, kw, sh, sw, ph, pw, dh, dw, groups, oh, ow, pool3
    int fc_conv2d_prepare(fc_conv2d_desc *d)
    int fc_conv2d_set_input_grad_method(int method)
    int fc_conv2d_input_grad_method()
    int fc_conv2d_set_direct_mode(int mode)
    int fc_conv2d_direct_mode()
    int fc_conv2d_set_direct_layout(int layout)
    int fc_conv2d_direct_layout()
    int fc_conv2d_set_winograd_mode(int mode)
    int fc_conv2d_winograd_mode()
    int fc_conv2d_set_winograd_tile(int tile)
    int fc_conv2d_winograd_tile()
    int fc_conv2d_winograd_tile_for(const fc_conv2d_desc *d)
    int fc_conv2d_winograd_weight_grad_tile(const fc_conv2d_desc *d, int threads)
    int64_t fc_conv2d_workspace_bytes(const fc_conv2d_desc *d, int64_t elem_size)
    int fc_conv2d_forward_path(const fc_context *ctx, const fc_conv2d_desc *d, int64_t elem_size)
    int fc_sconv2d_forward(const fc_context *ctx, const float *x, float *y, const float *weight,
                           const float *bias, const fc_conv2d_desc *d)
    int fc_dconv2d_forward(const fc_context *ctx, const double *x, double *y, const double *weight,
                           const double *bias, const fc_conv2d_desc *d)
    int fc_sconv2d_forward_fused(const fc_context *ctx, const float *x, float *y, int64_t ldy, const float *weight,
                                 const float *scale, const float *bias, const float *res, int relu,
                                 const fc_conv2d_desc *d)
    int fc_dconv2d_forward_fused(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                                 const double *weight, const double *scale, const double *bias, const double *res,
                                 int relu, const fc_conv2d_desc *d)
    int64_t fc_sconv2d_prepared_weights_elems(const fc_context *ctx, const fc_conv2d_desc *d)
    int64_t fc_dconv2d_prepared_weights_elems(const fc_context *ctx, const fc_conv2d_desc *d)
    int fc_sconv2d_prepare_weights(const fc_context *ctx, const float *weight, float *prepared, int64_t elems,
                                   const fc_conv2d_desc *d)
    int fc_dconv2d_prepare_weights(const fc_context *ctx, const double *weight, double *prepared, int64_t elems,
                                   const fc_conv2d_desc *d)
    int fc_sconv2d_forward_pooled(const fc_context *ctx, const float *x, float *y, int64_t ldy,
                                  const float *weight, const float *prepared, int64_t elems, const float *scale,
                                  const float *bias, const float *res, int relu, const fc_conv2d_desc *d)
    int fc_dconv2d_forward_pooled(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                                  const double *weight, const double *prepared, int64_t elems, const double *scale,
                                  const double *bias, const double *res, int relu, const fc_conv2d_desc *d)
    int fc_sconv2d_forward_prepared(const fc_context *ctx, const float *x, float *y, int64_t ldy,
                                    const float *weight, const float *prepared, int64_t elems, const float *scale,
                                    const float *bias, const float *res, int relu, const fc_conv2d_desc *d)
    int fc_dconv2d_forward_prepared(const fc_context *ctx, const double *x, double *y, int64_t ldy,
                                    const double *weight, const double *prepared, int64_t elems,
                                    const double *scale, const double *bias, const double *res, int relu,
                                    const fc_conv2d_desc *d)
    ctypedef struct fc_sconv2d_output:
        float *y
        int64_t ldy
        int64_t f
    ctypedef struct fc_dconv2d_output:
        double *y
        int64_t ldy
        int64_t f
    int fc_sconv2d_forward_split(const fc_context *ctx, const float *x, const fc_sconv2d_output *outs, int nout,
                                 const float *weight, const float *prepared, int64_t elems, const float *scale,
                                 const float *bias, int relu, const fc_conv2d_desc *d)
    int fc_dconv2d_forward_split(const fc_context *ctx, const double *x, const fc_dconv2d_output *outs, int nout,
                                 const double *weight, const double *prepared, int64_t elems, const double *scale,
                                 const double *bias, int relu, const fc_conv2d_desc *d)
    int fc_sconv2d_backward_input(const fc_context *ctx, const float *dy, float *dx, const float *weight,
                                  const fc_conv2d_desc *d)
    int fc_dconv2d_backward_input(const fc_context *ctx, const double *dy, double *dx, const double *weight,
                                  const fc_conv2d_desc *d)
    int fc_sconv2d_backward_weight(const fc_context *ctx, const float *x, const float *dy, float *dweight,
                                   float *dbias, const fc_conv2d_desc *d)
    int fc_dconv2d_backward_weight(const fc_context *ctx, const double *x, const double *dy, double *dweight,
                                   double *dbias, const fc_conv2d_desc *d)


cdef fc_conv2d_desc _conv_desc(tuple x_shape, tuple w_shape, tuple stride, tuple padding, tuple dilation,
                               int64_t groups) except *:
    cdef fc_conv2d_desc d
    d.n, d.c, d.h, d.w = x_shape
    d.f = w_shape[0]
    d.kh, d.kw = w_shape[2], w_shape[3]
    d.sh, d.sw = stride
    d.ph, d.pw = padding
    d.dh, d.dw = dilation
    d.groups = groups
    d.pool3 = 0
    check(fc_conv2d_prepare(&d))
    return d


_INPUT_GRAD_METHODS = ("auto", "col2im", "flipped")


def conv2d_input_grad_method(method=None):
    """The process-wide input-gradient method ("auto", "col2im" or "flipped"); sets it first when given.

    "auto" picks the cheaper one per layer; the others pin one method (the flipped forward convolution only
    applies to stride-1 layers, col2im runs elsewhere), so that tests can check both. Returns the previous value.
    """
    previous = _INPUT_GRAD_METHODS[fc_conv2d_input_grad_method()]
    if method is not None:
        if method not in _INPUT_GRAD_METHODS:
            raise ValueError(f"method must be one of {_INPUT_GRAD_METHODS}, got {method!r}")
        check(fc_conv2d_set_input_grad_method(_INPUT_GRAD_METHODS.index(method)))
    return previous


_DIRECT_MODES = ("auto", "never", "always")


def conv2d_direct_mode(mode=None):
    """The process-wide use of the direct-convolution kernels ("auto", "never" or "always"); sets it when given.

    "auto" runs stride-1 layers with few filters per group on them; "never" keeps every layer on the GEMM path;
    "always" sends every stride-1 layer with a small enough image there (tests check both paths so). Returns the
    previous value.
    """
    previous = _DIRECT_MODES[fc_conv2d_direct_mode()]
    if mode is not None:
        if mode not in _DIRECT_MODES:
            raise ValueError(f"mode must be one of {_DIRECT_MODES}, got {mode!r}")
        check(fc_conv2d_set_direct_mode(_DIRECT_MODES.index(mode)))
    return previous


_DIRECT_LAYOUTS = ("auto", "wide", "lanes")


def conv2d_direct_layout(layout=None):
    """The process-wide pixel layout of the direct forward kernels ("auto", "wide" or "lanes"); sets it when given.

    "wide" vectorizes along each image's zero-padded rows (computing the padding columns too), "lanes" puts one
    image in each lane of a vector (no wasted columns; the batch rounded up to the vector length); "auto" picks the
    one that wastes less. Returns the previous setting. Meant for tests and benchmarks."""
    previous = _DIRECT_LAYOUTS[fc_conv2d_direct_layout()]
    if layout is not None:
        if layout not in _DIRECT_LAYOUTS:
            raise ValueError(f"layout must be one of {_DIRECT_LAYOUTS}, got {layout!r}")
        check(fc_conv2d_set_direct_layout(_DIRECT_LAYOUTS.index(layout)))
    return previous


_WINOGRAD_MODES = ("auto", "never", "always")


def conv2d_winograd_mode(mode=None):
    """The process-wide use of Winograd F(2x2, 3x3) ("auto", "never" or "always"); sets it when given.

    "auto" runs 3x3 stride-1 undilated layers with at least 16 channels and 16 filters per group on it (their
    forward, and their input gradient when computed as a flipped forward convolution); "never" keeps them on the
    other paths; "always" sends every 3x3 stride-1 undilated layer there (tests check both ways). Returns the
    previous value.
    """
    previous = _WINOGRAD_MODES[fc_conv2d_winograd_mode()]
    if mode is not None:
        if mode not in _WINOGRAD_MODES:
            raise ValueError(f"mode must be one of {_WINOGRAD_MODES}, got {mode!r}")
        check(fc_conv2d_set_winograd_mode(_WINOGRAD_MODES.index(mode)))
    return previous


def conv2d_winograd_tile(tile=None):
    """The process-wide output tile of the Winograd paths: "auto", 2 (F(2x2, 3x3)) or 4 (F(4x4, 3x3)); sets it
    when given and returns the previous value.

    F(4x4, 3x3) does 1.78x fewer multiplications than F(2x2, 3x3) but rounds more (its transforms' coefficients
    reach 5 and 1/24); "auto" picks per layer. The setting covers the forward (and so the input gradient) and the
    weight gradient.
    """
    current = fc_conv2d_winograd_tile()
    previous = "auto" if current == 0 else current
    if tile is not None:
        if tile not in ("auto", 2, 4) or isinstance(tile, bool):
            raise ValueError(f"tile must be 'auto', 2 or 4, got {tile!r}")
        check(fc_conv2d_set_winograd_tile(0 if tile == "auto" else tile))
    return previous


def conv2d_output_hw(tuple x_shape, tuple w_shape, tuple stride, tuple padding, tuple dilation, int64_t groups):
    cdef fc_conv2d_desc d = _conv_desc(x_shape, w_shape, stride, padding, dilation, groups)
    return d.oh, d.ow


def conv2d_workspace_bytes(tuple x_shape, tuple w_shape, tuple stride, tuple padding, tuple dilation,
                           int64_t groups, int64_t itemsize):
    cdef fc_conv2d_desc d = _conv_desc(x_shape, w_shape, stride, padding, dilation, groups)
    return fc_conv2d_workspace_bytes(&d, itemsize)


_FORWARD_PATHS = ("gemm", "direct", "winograd")


def conv2d_forward_path(tuple x_shape, tuple w_shape, tuple stride, tuple padding, tuple dilation, int64_t groups,
                        int64_t itemsize):
    """Which kernels the forward convolution of these shapes runs on with the current arch, thread count and
    settings: "gemm" (implicit im2col + GEMM), "direct" or "winograd"."""
    cdef fc_conv2d_desc d = _conv_desc(x_shape, w_shape, stride, padding, dilation, groups)
    cdef fc_context ctx = fc_context_default()
    return _FORWARD_PATHS[fc_conv2d_forward_path(&ctx, &d, itemsize)]


def conv2d_winograd_tiles(tuple x_shape, tuple w_shape, tuple padding, int64_t groups):
    """The output tiles (2 or 4) a 3x3 stride-1 layer of these shapes would take on the Winograd paths with the
    current setting and thread count: (forward and input gradient's flipped forward, weight gradient)."""
    cdef fc_conv2d_desc d = _conv_desc(x_shape, w_shape, (1, 1), padding, (1, 1), groups)
    cdef fc_context ctx = fc_context_default()
    return fc_conv2d_winograd_tile_for(&d), fc_conv2d_winograd_weight_grad_tile(&d, ctx.num_threads)


def conv2d_prepare_weights(const real[:, :, :, ::1] weight, tuple x_shape, tuple stride, tuple padding,
                           tuple dilation, int64_t groups):
    """The weights of a layer prepared for repeated inference forwards (conv2d_forward's `prepared`): a 1-D
    array of weight's dtype holding the Winograd transform for the current arch and tile setting, or the GEMM's
    packed panels (also for a dense layer, whose kernel covers its whole unpadded input), or the direct kernels'
    filter blocks, or None when this layer's forward has nothing to prepare. Only x_shape's channels, height and
    width matter (the tile depends on the output width)."""
    cdef fc_conv2d_desc d = _conv_desc((max(int(x_shape[0]), 1),) + tuple(x_shape[1:]),
                                       (weight.shape[0], weight.shape[1], weight.shape[2], weight.shape[3]), stride,
                                       padding, dilation, groups)
    cdef fc_context ctx = fc_context_default()
    cdef int64_t elems
    cdef int err = 0
    if real is float:
        elems = fc_sconv2d_prepared_weights_elems(&ctx, &d)
    else:
        elems = fc_dconv2d_prepared_weights_elems(&ctx, &d)
    if elems < 0:
        check(FC_ERR_OVERFLOW)
    if elems == 0:
        return None
    dtype = np.float32 if real is float else np.float64
    cdef Py_ssize_t item = sizeof(real)
    raw = np.empty(elems + 64 // item, dtype=dtype)
    start = (-raw.ctypes.data % 64) // item  # the transform's planes start on a cache line
    prepared = raw[start:start + elems]
    cdef real[::1] pv = prepared
    with nogil:
        if real is float:
            err = fc_sconv2d_prepare_weights(&ctx, &weight[0, 0, 0, 0], &pv[0], elems, &d)
        else:
            err = fc_dconv2d_prepare_weights(&ctx, &weight[0, 0, 0, 0], &pv[0], elems, &d)
    check(err)
    return prepared


cdef int64_t _image_stride(const Py_ssize_t *shape, const Py_ssize_t *strides, Py_ssize_t item) except -1:
    """The distance in elements between an output's images (0: dense or one image); ValueError unless each image is
    one contiguous block (a C-order array or a channel slice of one), at increasing addresses."""
    if shape[0] > 0 and shape[1] > 0 and shape[2] > 0 and shape[3] > 0:
        if ((shape[3] > 1 and strides[3] != item) or (shape[2] > 1 and strides[2] != shape[3] * item)
                or (shape[1] > 1 and strides[1] != shape[2] * shape[3] * item)
                or (shape[0] > 1 and (strides[0] % item != 0 or strides[0] < shape[1] * shape[2] * shape[3] * item))):
            raise ValueError("each image of the output must be a contiguous block (a channel slice of a C-order "
                             "array), with images at increasing addresses")
        if shape[0] > 1:
            return strides[0] // item
    return 0


def conv2d_forward_split(const real[:, :, :, ::1] x, list outs, const real[:, :, :, ::1] weight,
                         const real[::1] bias, tuple stride, tuple padding, tuple dilation, bint relu=False,
                         const real[::1] scale=None, const real[::1] prepared=None):
    """conv2d_forward of one layer (groups 1, on the GEMM path) whose filters are split in order over the arrays in
    outs (at most 4, each of shape (N, f_s, OH, OW) with every image one contiguous block), the input packed once
    for all of them: several layers reading one input run as one. ValueError when the layer is not on the GEMM
    path or the channel counts do not add up."""
    cdef fc_conv2d_desc d = _conv_desc((x.shape[0], x.shape[1], x.shape[2], x.shape[3]),
                                       (weight.shape[0], weight.shape[1], weight.shape[2], weight.shape[3]), stride,
                                       padding, dilation, 1)
    cdef fc_context ctx = fc_context_default()
    cdef Py_ssize_t item = sizeof(real)
    cdef fc_sconv2d_output so[4]
    cdef fc_dconv2d_output do[4]
    cdef real[:, :, :, :] yv
    cdef int nout = len(outs), s, err = 0
    cdef int64_t total = 0
    if nout < 1 or nout > 4:
        raise ValueError(f"outs must hold 1 to 4 arrays, got {nout}")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError("bias needs one value per output channel")
    if scale is not None and scale.shape[0] != weight.shape[0]:
        raise ValueError("scale needs one value per output channel")
    views = []
    for s in range(nout):
        yv = outs[s]
        if yv.shape[0] != d.n or yv.shape[2] != d.oh or yv.shape[3] != d.ow or yv.shape[1] < 1:
            raise ValueError(f"outs[{s}] has shape {outs[s].shape}; expected ({d.n}, f, {d.oh}, {d.ow})")
        views.append(yv)
        if real is float:
            so[s].ldy, so[s].f = _image_stride(yv.shape, yv.strides, item), yv.shape[1]
            so[s].y = &yv[0, 0, 0, 0] if d.n > 0 else NULL
        else:
            do[s].ldy, do[s].f = _image_stride(yv.shape, yv.strides, item), yv.shape[1]
            do[s].y = &yv[0, 0, 0, 0] if d.n > 0 else NULL
        total += yv.shape[1]
    if total != d.f:
        raise ValueError(f"the outputs' channels add up to {total}, the weight has {d.f} filters")
    if fc_conv2d_forward_path(&ctx, &d, item) != 0:
        raise ValueError("conv2d_forward_split runs layers on the GEMM path only (conv2d_forward_path: "
                         f"{_FORWARD_PATHS[fc_conv2d_forward_path(&ctx, &d, item)]!r})")
    if d.n == 0:
        return
    cdef const real *pb = &bias[0] if bias is not None else NULL
    cdef const real *ps = &scale[0] if scale is not None else NULL
    cdef const real *pp = &prepared[0] if prepared is not None and prepared.shape[0] > 0 else NULL
    cdef int64_t elems = prepared.shape[0] if pp != NULL else 0
    with nogil:
        if real is float:
            err = fc_sconv2d_forward_split(&ctx, &x[0, 0, 0, 0], so, nout, &weight[0, 0, 0, 0], pp, elems, ps, pb,
                                           relu, &d)
        else:
            err = fc_dconv2d_forward_split(&ctx, &x[0, 0, 0, 0], do, nout, &weight[0, 0, 0, 0], pp, elems, ps, pb,
                                           relu, &d)
    check(err)
    cdef void *ys[4]
    cdef int64_t ldys[4]
    cdef int64_t fs[4]
    if _plan_recorder is not None:
        for s in range(nout):
            if real is float:
                ys[s], ldys[s], fs[s] = so[s].y, so[s].ldy, so[s].f
            else:
                ys[s], ldys[s], fs[s] = do[s].y, do[s].ldy, do[s].f
        _record_conv_split(real is double, &x[0, 0, 0, 0], &weight[0, 0, 0, 0], pp, elems, ps, pb, nout, ys, ldys, fs,
                           relu, &d, (x.base, weight.base, _mv_base(bias), _mv_base(scale), _mv_base(prepared),
                                      tuple(outs)), tuple(outs))


def conv2d_forward(const real[:, :, :, ::1] x, real[:, :, :, :] y, const real[:, :, :, ::1] weight,
                   const real[::1] bias, tuple stride, tuple padding, tuple dilation, int64_t groups,
                   const real[:, :, :, ::1] residual=None, bint relu=False, const real[::1] scale=None,
                   const real[::1] prepared=None, bint pool_input=False):
    """y = conv(x, weight) * scale + bias (+ residual, y's shape; then max(., 0) when relu), y written once.
    Each image of y must be contiguous (y may be a channel slice of a wider array); a residual needs y dense.
    prepared: conv2d_prepare_weights(weight, ...), read instead of transforming weight where it was made for
    what the layer runs now (arch, tile, shapes); otherwise ignored. pool_input: convolve max_pool2d(x, 3, 1, 1)
    instead of x, for a layer conv2d_pooled_input_fused says yes to (ValueError otherwise)."""
    cdef fc_conv2d_desc d = _conv_desc((x.shape[0], x.shape[1], x.shape[2], x.shape[3]),
                                       (weight.shape[0], weight.shape[1], weight.shape[2], weight.shape[3]), stride, padding, dilation,
                                       groups)
    cdef fc_context ctx = fc_context_default()
    cdef const real *pb = &bias[0] if bias is not None else NULL
    cdef const real *ps = &scale[0] if scale is not None else NULL
    if scale is not None and scale.shape[0] != weight.shape[0]:
        raise ValueError("scale needs one value per output channel")
    if bias is not None and bias.shape[0] != weight.shape[0]:
        raise ValueError("bias needs one value per output channel")
    cdef const real *pr = NULL
    cdef int err = 0
    cdef Py_ssize_t item = sizeof(real)
    cdef int64_t ldy = _image_stride(y.shape, y.strides, item)
    if residual is not None:
        for i in range(4):
            if residual.shape[i] != y.shape[i]:
                raise ValueError("residual's shape differs from the output's")
        if ldy != 0 and ldy != y.shape[1] * y.shape[2] * y.shape[3]:
            raise ValueError("a residual needs a dense output")
        if residual.shape[0] > 0:
            pr = &residual[0, 0, 0, 0]
    if d.n == 0:
        return
    cdef const real *pp = &prepared[0] if prepared is not None and prepared.shape[0] > 0 else NULL
    cdef int64_t elems = prepared.shape[0] if pp != NULL else 0
    with nogil:
        if real is float:
            if pool_input:
                err = fc_sconv2d_forward_pooled(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], ldy, &weight[0, 0, 0, 0], pp,
                                                elems, ps, pb, pr, relu, &d)
            else:
                err = fc_sconv2d_forward_prepared(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], ldy, &weight[0, 0, 0, 0],
                                                  pp, elems, ps, pb, pr, relu, &d)
        else:
            if pool_input:
                err = fc_dconv2d_forward_pooled(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], ldy, &weight[0, 0, 0, 0], pp,
                                                elems, ps, pb, pr, relu, &d)
            else:
                err = fc_dconv2d_forward_prepared(&ctx, &x[0, 0, 0, 0], &y[0, 0, 0, 0], ldy, &weight[0, 0, 0, 0],
                                                  pp, elems, ps, pb, pr, relu, &d)
    check(err)
    if _plan_recorder is not None:
        _record_conv(PLAN_CONV_POOLED if pool_input else PLAN_CONV, real is double, &x[0, 0, 0, 0], &y[0, 0, 0, 0],
                     &weight[0, 0, 0, 0], pp, ps, pb, pr, ldy, elems, relu, &d,
                     (x.base, y.base, weight.base, _mv_base(bias), _mv_base(scale), _mv_base(prepared),
                      _mv_base(residual)), (y.base,))


def conv2d_pooled_input_fused(tuple x_shape, tuple w_shape, tuple stride, tuple padding, tuple dilation,
                              int64_t groups, int64_t itemsize):
    """Whether conv2d_forward(..., pool_input=True) takes this layer: pointwise (1x1, stride 1, no padding or
    dilation) on the GEMM path with the current arch, thread count and settings, and not a whole-input layer."""
    if tuple(w_shape[2:]) != (1, 1) or tuple(stride) != (1, 1) or tuple(padding) != (0, 0) or \
            tuple(dilation) != (1, 1) or tuple(x_shape[2:]) == (1, 1):
        return False
    return conv2d_forward_path(x_shape, w_shape, stride, padding, dilation, groups, itemsize) == "gemm"


def conv2d_backward_input(const real[:, :, :, ::1] dy, real[:, :, :, ::1] dx, const real[:, :, :, ::1] weight,
                          tuple stride, tuple padding, tuple dilation, int64_t groups):
    cdef fc_conv2d_desc d = _conv_desc((dx.shape[0], dx.shape[1], dx.shape[2], dx.shape[3]),
                                       (weight.shape[0], weight.shape[1], weight.shape[2], weight.shape[3]), stride, padding, dilation,
                                       groups)
    cdef fc_context ctx = fc_context_default()
    cdef int err = 0
    if d.n == 0:
        return
    with nogil:
        if real is float:
            err = fc_sconv2d_backward_input(&ctx, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &weight[0, 0, 0, 0], &d)
        else:
            err = fc_dconv2d_backward_input(&ctx, &dy[0, 0, 0, 0], &dx[0, 0, 0, 0], &weight[0, 0, 0, 0], &d)
    check(err)


def conv2d_backward_weight(const real[:, :, :, ::1] x, const real[:, :, :, ::1] dy, real[:, :, :, ::1] dweight,
                           real[::1] dbias, tuple w_shape, tuple stride, tuple padding, tuple dilation,
                           int64_t groups):
    """dweight and/or dbias (either may be None) from x and dy; both are overwritten."""
    cdef fc_conv2d_desc d = _conv_desc((x.shape[0], x.shape[1], x.shape[2], x.shape[3]), w_shape, stride, padding, dilation, groups)
    cdef fc_context ctx = fc_context_default()
    cdef real *pdw = &dweight[0, 0, 0, 0] if dweight is not None else NULL
    cdef real *pdb = &dbias[0] if dbias is not None else NULL
    cdef const real *px = &x[0, 0, 0, 0] if d.n > 0 else NULL
    cdef const real *pdy = &dy[0, 0, 0, 0] if d.n > 0 else NULL
    cdef int err = 0
    with nogil:
        if real is float:
            err = fc_sconv2d_backward_weight(&ctx, px, pdy, pdw, pdb, &d)
        else:
            err = fc_dconv2d_backward_weight(&ctx, px, pdy, pdw, pdb, &d)
    check(err)
