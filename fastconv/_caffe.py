"""Caffe import: a fastconv model from a ``.prototxt`` network definition and its ``.caffemodel`` weights.

    >>> from fastconv.io import load_caffe
    >>> net = load_caffe("deploy.prototxt", "bvlc_alexnet.caffemodel")      # in eval mode
    >>> probs = net.forward(images)                                         # (N, 3, 227, 227) float32

Neither Caffe nor protobuf is needed: this module carries two small readers.

* ``parse_prototxt`` reads the protobuf TEXT format: messages ``name { ... }`` (or ``name: { }``, ``< >``),
  scalars ``name: value`` (numbers, quoted strings with C escapes, adjacent strings joined, enum identifiers,
  ``true``/``false``, ``inf``/``nan``), list values ``name: [1, 2]``, ``#`` comments, optional ``;``/``,``
  separators. It knows no schema: every field may repeat, and the layer converters read fields by name.
* ``read_caffemodel`` (``decode_caffemodel`` for bytes) decodes the protobuf WIRE format (varints of at most 10
  bytes, length-delimited records, fixed32/fixed64, packed and unpacked repeated scalars) and keeps only each
  layer's name and parameter blobs.

Every length is checked against the bytes that remain, the text parser bounds its nesting depth, integer fields
are held to Caffe's ranges and no layer may ask for more than 2**31 parameters, so a malformed or truncated file
is a ValueError naming the file and the byte offset or line, never a hang or a crash.

Wire-format field numbers used (from Caffe's ``src/caffe/proto/caffe.proto``; wire type 0 = varint,
1 = fixed64, 2 = length-delimited, 5 = fixed32):

    ===================  ===========================  ======  ===========================================
    message              field                        number  wire type read
    ===================  ===========================  ======  ===========================================
    NetParameter         layers (V1LayerParameter)         2  2
    NetParameter         layer (LayerParameter)          100  2
    LayerParameter       name                              1  2
    LayerParameter       type (string)                     2  2
    LayerParameter       blobs (BlobProto)                 7  2
    V1LayerParameter     layer (V0LayerParameter)          1  2
    V1LayerParameter     name                              4  2
    V1LayerParameter     type (enum LayerType)             5  0
    V1LayerParameter     blobs (BlobProto)                 6  2
    V0LayerParameter     name, type (string)            1, 2  2
    V0LayerParameter     blobs (BlobProto)                50  2
    BlobProto            num, channels, height, width  1..4  0 (legacy 4-D shape, used when shape is absent)
    BlobProto            data (float)                      5  2 packed, or 5 one value per record
    BlobProto            diff                              6  skipped
    BlobProto            shape (BlobShape)                 7  2
    BlobProto            double_data (double)              8  2 packed, or 1 one value per record
    BlobProto            double_diff                       9  skipped
    BlobShape            dim (int64)                       1  2 packed, or 0 one value per record
    ===================  ===========================  ======  ===========================================

Other fields are skipped by wire type; groups (wire types 3, 4) and the invalid types 6, 7 are errors. As in
Caffe, ``double_data`` is used when present, else ``data``; weights are matched to prototxt layers by name and
layers of the caffemodel that the prototxt does not use are ignored.

Layers (``layer {}`` with string types, or legacy V1 ``layers {}`` with enum types such as CONVOLUTION; V0
definitions nested in V1 layers are refused in text, read in weights). Include/exclude rules are evaluated
for the TEST phase (level 0, no stages).

    Convolution   nn.Conv2d: num_output, kernel_size / kernel_h+kernel_w, stride(_h/_w), pad(_h/_w), dilation,
                  group, bias_term. Weights (num_output, C/group, kh, kw), bias (num_output,).
    Pooling       MAX -> nn.MaxPool2d, AVE -> nn.AvgPool2d (count_include_pad: Caffe divides by the window
                  clipped to the padded input, as PyTorch); round_mode CEIL (Caffe's default) -> ceil_mode=True,
                  FLOOR -> False. global_pooling: AVE -> nn.GlobalAvgPool2d, MAX -> nn.MaxPool2d over the
                  declared (H, W).
                  Output size: Caffe computes ceil((H + 2p - k) / s) + 1 and, ONLY WHEN p > 0, drops the last
                  window if it would start at or past H + p. PyTorch's rule (our kernels') drops it whatever p.
                  The two differ only when p == 0 and k < s, where Caffe's last window lies entirely outside the
                  input (its MAX is -FLT_MAX, its AVE divides by a non-positive count): such layers are refused
                  with a ValueError. Caffe accepts pad < kernel; our kernels need pad <= kernel // 2 (refused
                  otherwise).
    LRN           ACROSS_CHANNELS -> nn.LocalResponseNorm(local_size, alpha, beta, k). Same convention:
                  ``x * (k + alpha / local_size * sum x^2) ** -beta`` (Caffe's lrn_layer divides alpha by the
                  size; k defaults to 1; local_size must be odd). WITHIN_CHANNEL is refused.
    InnerProduct  nn.Linear (weights (num_output, K), or (K, num_output) with transpose: true), preceded by an
                  nn.Flatten named "<layer>_flatten" when the input has more than 2 axes (Caffe flattens from
                  axis 1 in C, H, W order, as Flatten does).
    ReLU          nn.ReLU (negative_slope must be 0).      Dropout  nn.Dropout(dropout_ratio).
    Softmax       nn.Softmax (axis 1).                     Flatten  nn.Flatten (axis 1 to the end).
    BatchNorm     BatchNorm (an nn.BatchNorm2d). Caffe stores mean * s, var * s and s (a moving-average
                  normalizer): mean = blob0 / s, var = blob1 / s (0 when s == 0, as Caffe), eps (default 1e-5),
                  momentum = 1 - moving_average_fraction (Caffe's normalized average and an exponential moving
                  average agree once s has converged). use_global_stats: true always uses the stored statistics,
                  false always the batch's; unset follows train()/eval().
    Scale         folded into the BatchNorm just before it (gamma = scale, beta = bias) when it is that layer's
                  only consumer (without bias_term, the BatchNorm's bias stays 0 and frozen); otherwise a
                  per-channel Scale module (axis 1, one axis, learned parameters).
    Concat        channel axis only.                       Eltwise  SUM with optional coeff (PROD, MAX refused).
    Split         no module: its tops alias its bottom.    Input    the network's input (one input only).

In-place layers (top == bottom) are handled by renaming every blob version. Only the layers the output depends on
are built (`output` picks the output blob; by default the one blob no layer consumes).

Assembly: with ``containers=True`` (default) the network becomes our containers -- a chain is an nn.Sequential
whose children are named after the Caffe layers; a fork whose branches are chains meeting in a Concat becomes
nn.Concat (branches in the Concat's bottom order, each an nn.Sequential named after its first layer), meeting in
a 2-input Eltwise SUM with unit coefficients becomes nn.Residual (the longer branch is the body); forks nest.
Any other DAG (coefficients, more than two summands, a branch feeding two joins) falls back to `Graph`, a small
module that runs the layers in prototxt order and, in backward, accumulates gradients where a blob fans out.
``containers=False`` always builds a Graph. fastconv.analyze walks Sequential/Concat/Residual trees; it does not
walk a Graph.

Parameter names: ``<layer>.weight`` / ``<layer>.bias`` (nested under container names for branches), BatchNorm
statistics as buffers ``<bn layer>.running_mean`` / ``running_var``. Layers whose ParamSpec (or V1 blobs_lr)
has lr_mult 0 get their parameters frozen.
"""
import os
import re
from collections import Counter

import numpy as np

from . import init as initializers
from . import nn

# ================================================================================================ text format

_MAX_DEPTH = 64  # nesting of text messages; Caffe's deepest is 4 (net > layer > param > shape)

_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\f\v]+)
  | (?P<newline>\n)
  | (?P<comment>\#[^\n]*)
  | (?P<string>"(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')
  | (?P<number>[-+]?(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?[fF]?)(?![A-Za-z0-9_.]))
  | (?P<ident>-?[A-Za-z_][A-Za-z0-9_]*)
  | (?P<punct>[{}<>:;,\[\]])
""", re.VERBOSE)

_SIMPLE_ESCAPES = {"n": b"\n", "t": b"\t", "r": b"\r", "a": b"\a", "b": b"\b", "f": b"\f", "v": b"\v",
                   "\\": b"\\", "'": b"'", '"': b'"', "?": b"?"}


class Scalar:
    """One scalar value of a text message: kind is "string", "int", "float" or "ident"; line is 1-based."""
    __slots__ = ("kind", "value", "line")

    def __init__(self, kind, value, line):
        self.kind, self.value, self.line = kind, value, line

    def __repr__(self):
        return f"Scalar({self.kind}, {self.value!r}, line {self.line})"


class Message:
    """A parsed text message: ``fields`` maps each field name to the list of its values (Scalar or Message) in
    file order; ``line`` is where the message starts."""

    def __init__(self, line):
        self.line = line
        self.fields = {}

    def add(self, name, value):
        self.fields.setdefault(name, []).append(value)

    def __repr__(self):
        return f"Message(line {self.line}, fields {list(self.fields)})"


def _unescape(body, where):
    """The bytes of a quoted string's body (C escapes: simple, octal \\ooo, hex \\xhh) decoded as UTF-8."""
    out = bytearray()
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out += ch.encode("utf-8")
            i += 1
            continue
        nxt = body[i + 1]  # the token pattern guarantees a character after every backslash
        if nxt in _SIMPLE_ESCAPES:
            out += _SIMPLE_ESCAPES[nxt]
            i += 2
        elif nxt in "01234567":
            digits = re.match(r"[0-7]{1,3}", body[i + 1:]).group()
            if int(digits, 8) > 255:
                raise ValueError(f"{where}: octal escape \\{digits} is larger than a byte")
            out.append(int(digits, 8))
            i += 1 + len(digits)
        elif nxt in "xX":
            m = re.match(r"[0-9a-fA-F]{1,2}", body[i + 2:])
            if not m:
                raise ValueError(f"{where}: \\x escape without hex digits")
            out.append(int(m.group(), 16))
            i += 2 + len(m.group())
        else:
            raise ValueError(f"{where}: unknown escape \\{nxt} in a string")
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{where}: string is not valid UTF-8") from None


def _tokenize(text, source):
    """(kind, value, line, column) tokens; kind in string, int, float, ident, punct, eof."""
    tokens = []
    pos, line, line_start = 0, 1, 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        col = pos - line_start + 1
        if m is None:
            ch = text[pos]
            what = "an unterminated string" if ch in "\"'" else f"unexpected character {ch!r}"
            raise ValueError(f"{source}:{line}:{col}: {what}")
        kind, value = m.lastgroup, m.group()
        if kind == "newline":
            line += 1
            line_start = m.end()
        elif kind == "string":
            tokens.append(("string", _unescape(value[1:-1], f"{source}:{line}:{col}"), line, col))
        elif kind == "number":
            tokens.append(_number_token(value, line, col))
        elif kind == "ident":
            if value.startswith("-"):
                if value[1:].lower() not in ("inf", "infinity", "nan"):
                    raise ValueError(f"{source}:{line}:{col}: unexpected '-' before {value[1:]!r}")
                tokens.append(("float", float(value), line, col))
            else:
                tokens.append(("ident", value, line, col))
        elif kind == "punct":
            tokens.append(("punct", value, line, col))
        pos = m.end()
    tokens.append(("eof", None, line, pos - line_start + 1))
    return tokens


def _number_token(text, line, col):
    body = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if body[:2] in ("0x", "0X"):
        return ("int", sign * int(body, 16), line, col)
    if re.fullmatch(r"\d+", body):
        return ("int", sign * int(body), line, col)
    return ("float", float(text.rstrip("fF")), line, col)


def _describe(token):
    kind, value = token[0], token[1]
    return "the end of the file" if kind == "eof" else repr(value) if kind != "string" else f'string "{value}"'


def parse_prototxt(text, source="<prototxt>"):
    """Parse protobuf text format into a Message tree. Syntax errors are ValueErrors "source:line:col: ..."."""
    tokens = _tokenize(text, source)
    msg, i = _parse_fields(tokens, 0, source, None, 1, 0)
    return msg


def _parse_fields(tokens, i, source, closer, line, depth):
    """Fields until `closer` ("}" or ">") or the end of the file (closer None). Returns (Message, next index)."""
    if depth > _MAX_DEPTH:
        raise ValueError(f"{source}:{line}: messages nested deeper than {_MAX_DEPTH} levels")
    msg = Message(line)
    while True:
        kind, value, tline, tcol = tokens[i]
        where = f"{source}:{tline}:{tcol}"
        if kind == "eof":
            if closer is not None:
                raise ValueError(f"{where}: missing '{closer}' to close the message opened at line {line}")
            return msg, i
        if kind == "punct" and value == closer:
            return msg, i + 1
        if kind != "ident":
            raise ValueError(f"{where}: expected a field name, got {_describe(tokens[i])}")
        name = value
        i += 1
        colon = tokens[i][:2] == ("punct", ":")
        if colon:
            i += 1
        kind, value, vline, vcol = tokens[i]
        if kind == "punct" and value in "{<":
            sub, i = _parse_fields(tokens, i + 1, source, "}" if value == "{" else ">", vline, depth + 1)
            msg.add(name, sub)
        elif not colon:
            raise ValueError(f"{source}:{vline}:{vcol}: expected ':' or '{{' after field name '{name}', got "
                             f"{_describe(tokens[i])}")
        elif kind == "punct" and value == "[":
            i += 1
            if tokens[i][:2] == ("punct", "]"):
                i += 1
            else:
                while True:
                    kind, value, vline, vcol = tokens[i]
                    if kind == "punct" and value in "{<":
                        sub, i = _parse_fields(tokens, i + 1, source, "}" if value == "{" else ">", vline,
                                               depth + 1)
                        msg.add(name, sub)
                    else:
                        scalar, i = _parse_scalar(tokens, i, source, name)
                        msg.add(name, scalar)
                    kind, value, vline, vcol = tokens[i]
                    i += 1
                    if (kind, value) == ("punct", "]"):
                        break
                    if (kind, value) != ("punct", ","):
                        raise ValueError(f"{source}:{vline}:{vcol}: expected ',' or ']' in the list of '{name}', "
                                         f"got {_describe(tokens[i - 1])}")
        else:
            scalar, i = _parse_scalar(tokens, i, source, name)
            msg.add(name, scalar)
        if tokens[i][0] == "punct" and tokens[i][1] in ";,":
            i += 1


def _parse_scalar(tokens, i, source, name):
    kind, value, line, col = tokens[i]
    if kind == "string":
        parts = []
        while tokens[i][0] == "string":  # adjacent strings are one value
            parts.append(tokens[i][1])
            i += 1
        return Scalar("string", "".join(parts), line), i
    if kind in ("int", "float", "ident"):
        return Scalar(kind, value, line), i + 1
    raise ValueError(f"{source}:{line}:{col}: expected a value for '{name}', got {_describe(tokens[i])}")


# ------------------------------------------------------------------------------------------ typed field access

class _Fields:
    """Typed reading of a Message's fields, every error naming `where` (file and layer) and the value's line."""

    def __init__(self, msg, where, source):
        self.msg, self.where, self.source = msg, where, source

    def _error(self, line, text):
        return ValueError(f"{self.source}:{line}: {self.where}: {text}")

    def has(self, name):
        return bool(self.msg.fields.get(name))

    def values(self, name):
        return self.msg.fields.get(name, [])

    def _single(self, name):
        values = self.values(name)
        if len(values) > 1:
            raise self._error(values[1].line, f"field '{name}' is given {len(values)} times")
        return values[0] if values else None

    def sub(self, name):
        """The sub-message `name` as _Fields (empty when absent)."""
        value = self._single(name)
        if value is None:
            return _Fields(Message(self.msg.line), self.where, self.source)
        if not isinstance(value, Message):
            raise self._error(value.line, f"field '{name}' must be a message {{ ... }}, got {value.value!r}")
        return _Fields(value, self.where, self.source)

    def subs(self, name):
        out = []
        for value in self.values(name):
            if not isinstance(value, Message):
                raise self._error(value.line, f"field '{name}' must be a message {{ ... }}, got {value.value!r}")
            out.append(_Fields(value, self.where, self.source))
        return out

    def _convert(self, value, name, kind):
        if isinstance(value, Message):
            raise self._error(value.line, f"field '{name}' must be a {kind}, got a message")
        if kind in ("int", "uint"):
            if value.kind != "int":
                raise self._error(value.line, f"field '{name}' must be an integer, got {value.value!r}")
            low, high = (0, 2 ** 32) if kind == "uint" else (-2 ** 63, 2 ** 63)  # Caffe's uint32 / int64
            if not low <= value.value < high:
                raise self._error(value.line, f"field '{name}' must be in [{low}, {high}), got {value.value}")
            return value.value
        if kind == "float":
            if value.kind == "ident" and value.value.lower() in ("inf", "infinity", "nan"):
                return float(value.value)
            if value.kind not in ("int", "float"):
                raise self._error(value.line, f"field '{name}' must be a number, got {value.value!r}")
            return float(value.value)
        if kind == "bool":
            if value.kind == "ident" and value.value in ("true", "True", "t"):
                return True
            if value.kind == "ident" and value.value in ("false", "False", "f"):
                return False
            if value.kind == "int" and value.value in (0, 1):
                return bool(value.value)
            raise self._error(value.line, f"field '{name}' must be true or false, got {value.value!r}")
        if kind == "string":
            if value.kind != "string":
                raise self._error(value.line, f"field '{name}' must be a quoted string, got {value.value!r}")
            return value.value
        raise AssertionError(kind)

    def get(self, name, kind, default=None):
        value = self._single(name)
        return default if value is None else self._convert(value, name, kind)

    def get_list(self, name, kind):
        return [self._convert(v, name, kind) for v in self.values(name)]

    def enum(self, name, numbers, default):
        """An enum given by identifier or number; `numbers` maps number -> identifier. Returns the identifier."""
        value = self._single(name)
        if value is None:
            return default
        if isinstance(value, Scalar) and value.kind == "ident" and value.value in numbers.values():
            return value.value
        if isinstance(value, Scalar) and value.kind == "int" and value.value in numbers:
            return numbers[value.value]
        shown = value.value if isinstance(value, Scalar) else "a message"
        raise self._error(value.line, f"field '{name}' must be one of {', '.join(numbers.values())}, got {shown!r}")


# ================================================================================================ wire format

class _WireError(Exception):
    """A malformed-record error at a byte offset; read_caffemodel turns it into a ValueError with the file."""

    def __init__(self, offset, text):
        super().__init__(text)
        self.offset, self.text = offset, text


def _varint(buf, pos, end):
    """Decode a base-128 varint at `pos` (at most 10 bytes, value < 2**64). Returns (value, next position)."""
    result = 0
    for i in range(10):
        if pos + i >= end:
            raise _WireError(pos, "a varint runs past the end of its record (truncated file?)")
        byte = buf[pos + i]
        result |= (byte & 0x7F) << (7 * i)
        if byte < 0x80:
            if i == 9 and byte > 1:
                raise _WireError(pos, "a varint exceeds 64 bits")
            return result, pos + i + 1
    raise _WireError(pos, "a varint is longer than 10 bytes")


def _signed64(value):
    return value - (1 << 64) if value >= 1 << 63 else value


_WIRE_NAMES = {0: "varint", 1: "fixed64", 2: "length-delimited", 5: "fixed32"}


def _records(buf, pos, end):
    """Yield (field number, wire type, value, offset) for each record in buf[pos:end]: value is the integer of a
    varint, or the (start, stop) byte range of a fixed32/fixed64/length-delimited payload."""
    while pos < end:
        at = pos
        key, pos = _varint(buf, pos, end)
        field, wire = key >> 3, key & 7
        if field == 0 or field >= 1 << 29:
            raise _WireError(at, f"invalid field number {field}")
        if wire == 0:
            value, pos = _varint(buf, pos, end)
        elif wire in (1, 5):
            size = 8 if wire == 1 else 4
            if size > end - pos:
                raise _WireError(at, f"a {_WIRE_NAMES[wire]} value of field {field} runs past the end of its record "
                                     f"(truncated file?)")
            value = (pos, pos + size)
            pos += size
        elif wire == 2:
            length, pos = _varint(buf, pos, end)
            if length > end - pos:
                raise _WireError(at, f"field {field} declares {length} bytes but only {end - pos} remain in its record "
                                     f"(truncated file?)")
            value = (pos, pos + length)
            pos += length
        else:
            raise _WireError(at, f"field {field} has wire type {wire}, which a caffemodel never uses "
                                 f"(groups 3/4 or invalid 6/7)" + (" -- is this a text file?" if at == 0 else ""))
        yield field, wire, value, at


def _expect(wire, allowed, field, what, at):
    if wire not in allowed:
        raise _WireError(at, f"{what} (field {field}) has wire type {wire} ({_WIRE_NAMES.get(wire, '?')}), expected "
                             f"{' or '.join(_WIRE_NAMES[w] for w in allowed)}")


def _utf8(buf, span, what, at):
    try:
        return bytes(buf[span[0]:span[1]]).decode("utf-8")
    except UnicodeDecodeError:
        raise _WireError(at, f"{what} is not valid UTF-8") from None


def _reals(buf, wire, span, dtype, field, what, at):
    """A packed run (wire type 2) or one unpacked value (fixed32 for float, fixed64 for double) as an array."""
    itemsize = np.dtype(dtype).itemsize
    _expect(wire, (2, 5 if itemsize == 4 else 1), field, what, at)
    start, stop = span
    if (stop - start) % itemsize:
        raise _WireError(at, f"{what}: {stop - start} bytes of packed {np.dtype(dtype).name} is not a multiple of "
                             f"{itemsize}")
    return np.frombuffer(buf, dtype=dtype, count=(stop - start) // itemsize, offset=start)


def _blob_shape(buf, span):
    dims = []
    for field, wire, value, at in _records(buf, *span):
        if field != 1:
            continue
        _expect(wire, (0, 2), field, "BlobShape.dim", at)
        if wire == 0:
            dims.append(_signed64(value))
        else:
            pos, stop = value
            while pos < stop:
                d, pos = _varint(buf, pos, stop)
                dims.append(_signed64(d))
        if len(dims) > 32:  # Caffe's kMaxBlobAxes
            raise _WireError(at, f"a blob shape has more than 32 axes")
    if any(d < 0 for d in dims):
        raise _WireError(span[0], f"a blob shape has a negative dimension: {dims}")
    return tuple(dims)


def _blob(buf, span, where):
    """BlobProto -> float array of its shape (float32 data, or float64 double_data when present)."""
    shape, legacy, floats, doubles = None, {}, [], []
    for field, wire, value, at in _records(buf, *span):
        if field == 7:
            _expect(wire, (2,), field, "BlobProto.shape", at)
            shape = _blob_shape(buf, value)
        elif field in (1, 2, 3, 4):
            _expect(wire, (0,), field, "BlobProto num/channels/height/width", at)
            legacy[field] = _signed64(value)
        elif field == 5:
            floats.append(_reals(buf, wire, value, "<f4", field, "BlobProto.data", at))
        elif field == 8:
            doubles.append(_reals(buf, wire, value, "<f8", field, "BlobProto.double_data", at))
    if shape is None and legacy:
        shape = tuple(legacy.get(f, 0) for f in (1, 2, 3, 4))
        if min(shape) < 0:
            raise _WireError(span[0], f"{where}: negative legacy blob dimensions {shape}")
    chunks = doubles or floats
    # one packed run (what Caffe writes) stays a view of the file's bytes: the model's copy is the only one
    data = chunks[0] if len(chunks) == 1 else np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    if shape is None:
        shape = (data.size,)
    count = 1
    for d in shape:
        count *= d
    if count != data.size:
        raise _WireError(span[0], f"{where}: shape {shape} holds {count} values but {data.size} are stored")
    return data.reshape(shape)


def _layer_record(buf, span, v1):
    """(name, [blobs]) of a LayerParameter (v1=False) or V1LayerParameter (with a nested V0 layer's fields used
    when the V1 record has no name / blobs of its own)."""
    name_field, blobs_field = (4, 6) if v1 else (1, 7)
    name, blob_spans, v0 = None, [], None
    for field, wire, value, at in _records(buf, *span):
        if field == name_field:
            _expect(wire, (2,), field, "layer name", at)
            name = _utf8(buf, value, "a layer name", at)
        elif field == blobs_field:
            _expect(wire, (2,), field, "layer blobs", at)
            blob_spans.append(value)
        elif v1 and field == 1:
            _expect(wire, (2,), field, "V0 layer", at)
            v0 = value
    if v0 is not None:
        for field, wire, value, at in _records(buf, *v0):
            if field == 1 and name is None:
                _expect(wire, (2,), field, "V0 layer name", at)
                name = _utf8(buf, value, "a layer name", at)
            elif field == 50 and not blob_spans:
                _expect(wire, (2,), field, "V0 layer blobs", at)
                blob_spans.append(value)
    where = f"layer '{name}'"
    return name, [_blob(buf, s, f"{where}, blob {i}") for i, s in enumerate(blob_spans)]


def decode_caffemodel(data, source="<caffemodel>"):
    """Decode the bytes of a .caffemodel (a binary NetParameter) into {layer name: [blob arrays]}, in file order.
    Arrays are float32 (float64 for double_data) views of `data`. Malformed input is a ValueError naming `source`
    and the byte offset."""
    buf = memoryview(data).cast("B") if not isinstance(data, bytes) else data
    layers = {}
    try:
        for field, wire, value, at in _records(buf, 0, len(buf)):
            if field in (2, 100):
                _expect(wire, (2,), field, "NetParameter layer", at)
                name, blobs = _layer_record(buf, value, v1=field == 2)
                if name is not None:
                    layers[name] = blobs
    except _WireError as e:
        raise ValueError(f"{source}: malformed caffemodel at byte {e.offset}: {e.text}") from None
    return layers


def read_caffemodel(path):
    """{layer name: [blob arrays]} from a .caffemodel file (see decode_caffemodel)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the caffemodel: {e.strerror}") from None
    return decode_caffemodel(data, path)


# ================================================================================================ modules

class Scale(nn.Module):
    """Caffe's Scale layer on the channel axis: y = x * weight[c] (+ bias[c]); x is (N, C, ...)."""

    def __init__(self, channels, bias=True, dtype=np.float32):
        super().__init__()
        self.channels = channels
        self.add_param("weight", np.ones(channels, dtype=dtype))
        if bias:
            self.add_param("bias", np.zeros(channels, dtype=dtype))

    def _per_channel(self, v, ndim):
        return v.reshape((1, -1) + (1,) * (ndim - 2))

    def forward(self, x):
        nn._check_dtype(x, self)
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"Scale({self.channels}) got input of shape {x.shape}")
        self._x = x
        y = x * self._per_channel(self.params["weight"], x.ndim)
        if "bias" in self.params:
            y += self._per_channel(self.params["bias"], x.ndim)
        return y

    def backward(self, dy):
        axes = (0,) + tuple(range(2, dy.ndim))
        if self.trainable("weight"):
            self.grads["weight"] += (dy * self._x).sum(axis=axes)
        if "bias" in self.params and self.trainable("bias"):
            self.grads["bias"] += dy.sum(axis=axes)
        if not self.need_input_grad:
            return None
        return dy * self._per_channel(self.params["weight"], dy.ndim)

    def extra_repr(self):
        return f"{self.channels}" + ("" if "bias" in self.params else ", bias=False")


class BatchNorm(nn.BatchNorm2d):
    """nn.BatchNorm2d with Caffe's use_global_stats: True always normalizes with the running statistics, False
    always with the batch's (updating the running ones), None follows train()/eval()."""

    def __init__(self, num_features, eps=1e-5, momentum=0.001, use_global_stats=None, dtype=np.float32):
        super().__init__(num_features, eps=eps, momentum=momentum, dtype=dtype)
        self.use_global_stats = use_global_stats

    def forward(self, x):
        if self.use_global_stats is None:
            return super().forward(x)
        mode = self.training
        self.training = not self.use_global_stats
        try:
            return super().forward(x)
        finally:
            self.training = mode

    def extra_repr(self):
        s = super().extra_repr()
        return s if self.use_global_stats is None else f"{s}, use_global_stats={self.use_global_stats}"


class Join(nn.Module):
    """A layer with several inputs, run by Graph: forward(list of arrays) -> array, backward(dy) -> list of
    gradients (None where not needed), output_shape(list of shapes)."""


class ConcatInputs(Join):
    """Caffe's Concat on the channel axis (axis 1)."""

    def output_shape(self, input_shapes):
        first = tuple(input_shapes[0])
        if any(len(s) != len(first) or s[0] != first[0] or tuple(s[2:]) != first[2:] for s in input_shapes):
            raise ValueError(f"Concat inputs disagree outside the channel axis: {list(map(tuple, input_shapes))}")
        return (first[0], sum(s[1] for s in input_shapes)) + first[2:]

    def forward(self, xs):
        self.output_shape([x.shape for x in xs])
        self._sizes = [x.shape[1] for x in xs]
        return np.concatenate(xs, axis=1)

    def backward(self, dy):
        if not self.need_input_grad:
            return [None] * len(self._sizes)
        bounds = np.cumsum([0] + self._sizes)
        return [np.ascontiguousarray(dy[:, a:b]) for a, b in zip(bounds[:-1], bounds[1:])]


class EltwiseSum(Join):
    """Caffe's Eltwise SUM: y = sum(coeff[i] * x[i]) over inputs of one shape."""

    def __init__(self, coeffs):
        super().__init__()
        self.coeffs = [float(c) for c in coeffs]

    def output_shape(self, input_shapes):
        if len(input_shapes) != len(self.coeffs):
            raise ValueError(f"EltwiseSum has {len(self.coeffs)} coefficients but got {len(input_shapes)} inputs")
        if any(tuple(s) != tuple(input_shapes[0]) for s in input_shapes):
            raise ValueError(f"Eltwise inputs differ in shape: {list(map(tuple, input_shapes))}")
        return tuple(input_shapes[0])

    def forward(self, xs):
        self.output_shape([x.shape for x in xs])
        y = xs[0] * self.coeffs[0] if self.coeffs[0] != 1 else xs[0].copy()
        for c, x in zip(self.coeffs[1:], xs[1:]):
            y += x if c == 1 else c * x
        return y

    def backward(self, dy):
        if not self.need_input_grad:
            return [None] * len(self.coeffs)
        return [dy if c == 1 else c * dy for c in self.coeffs]

    def extra_repr(self):
        return f"coeffs={self.coeffs}"


class Graph(nn.Module):
    """A network whose layers form any DAG: the children run in prototxt order, each reading the blobs it names.

    steps: (child name, input blob ids, output blob id) per child; blob id `input_id` is the network input and
    `output_id` the output. Join children (Concat, Eltwise) take a list of inputs. Backward walks the steps in
    reverse and sums the gradients reaching a blob from its several consumers (fan-out).
    """

    def __init__(self, steps, input_id, output_id):
        super().__init__()
        self.steps = []
        for name, module, inputs, output in steps:
            self.add_child(name, module)
            self.steps.append((name, tuple(inputs), output))
        self.input_id, self.output_id = input_id, output_id

    def output_shape(self, input_shape):
        shapes = {self.input_id: tuple(input_shape)}
        for name, inputs, output in self.steps:
            module = self.children[name]
            try:
                if isinstance(module, Join):
                    shapes[output] = module.output_shape([shapes[i] for i in inputs])
                else:
                    shapes[output] = module.output_shape(shapes[inputs[0]])
            except ValueError as e:
                raise ValueError(f"{name}: {e}") from None
        return shapes[self.output_id]

    def forward(self, x):
        values = {self.input_id: x}
        for name, inputs, output in self.steps:
            module = self.children[name]
            if isinstance(module, Join):
                values[output] = module.forward([values[i] for i in inputs])
            else:
                values[output] = module.forward(values[inputs[0]])
        return values[self.output_id]

    def backward(self, dy):
        # a blob needs a gradient if a trainable layer or the (gradient-needing) input lies upstream of it
        needs = {self.input_id: self.need_input_grad}
        for name, inputs, output in self.steps:
            needs[output] = any(needs[i] for i in inputs) or self.children[name].has_trainable()
        grads = {self.output_id: dy}
        for name, inputs, output in reversed(self.steps):
            g = grads.pop(output, None)
            module = self.children[name]
            need_input = any(needs[i] for i in inputs)
            if g is None or not (need_input or module.has_trainable()):
                continue
            module.need_input_grad = need_input
            dxs = module.backward(g)
            if not isinstance(module, Join):
                dxs = [dxs]
            for i, dx in zip(inputs, dxs):
                if dx is not None and needs[i]:
                    grads[i] = dx if i not in grads else grads[i] + dx
        return grads.get(self.input_id) if self.need_input_grad else None


# ================================================================================================ network

_V1_TYPES = {  # V1LayerParameter.LayerType identifier -> LayerParameter type string
    "NONE": "None", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution", "DATA": "Data",
    "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData",
    "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten",
    "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence", "SOFTMAX": "Softmax",
    "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH",
    "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
_V1_NUMBERS = {0: "NONE", 35: "ABSVAL", 1: "ACCURACY", 30: "ARGMAX", 2: "BNLL", 3: "CONCAT", 37: "CONTRASTIVE_LOSS",
               4: "CONVOLUTION", 5: "DATA", 39: "DECONVOLUTION", 6: "DROPOUT", 32: "DUMMY_DATA",
               7: "EUCLIDEAN_LOSS", 25: "ELTWISE", 38: "EXP", 8: "FLATTEN", 9: "HDF5_DATA", 10: "HDF5_OUTPUT",
               28: "HINGE_LOSS", 11: "IM2COL", 12: "IMAGE_DATA", 13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT",
               15: "LRN", 29: "MEMORY_DATA", 16: "MULTINOMIAL_LOGISTIC_LOSS", 34: "MVN", 17: "POOLING",
               26: "POWER", 18: "RELU", 19: "SIGMOID", 27: "SIGMOID_CROSS_ENTROPY_LOSS", 36: "SILENCE",
               20: "SOFTMAX", 21: "SOFTMAX_LOSS", 22: "SPLIT", 33: "SLICE", 23: "TANH", 24: "WINDOW_DATA",
               31: "THRESHOLD"}

_MAX_PARAMETERS = 2 ** 31  # per layer; the largest Model Zoo layer (VGG's fc6) has about 2 ** 27

SUPPORTED = ("Input", "Convolution", "Pooling", "LRN", "InnerProduct", "ReLU", "Dropout", "Softmax", "Flatten",
             "Concat", "BatchNorm", "Scale", "Eltwise", "Split")


class _Layer:
    """One prototxt layer: name, type, bottom/top blob names, its fields, file line, and the lr_mult of each
    parameter blob (None where unspecified)."""

    def __init__(self, name, type_, bottoms, tops, fields, line, lr_mults):
        self.name, self.type, self.bottoms, self.tops = name, type_, bottoms, tops
        self.fields, self.line, self.lr_mults = fields, line, lr_mults

    def error(self, text):
        return ValueError(f"{self.fields.source}:{self.line}: layer '{self.name}' ({self.type}): {text}")


class _Node:
    """A layer in the renamed (one id per blob version) graph."""

    def __init__(self, layer, inputs, output):
        self.layer, self.inputs, self.output = layer, inputs, output
        self.modules = []      # (child name, module) run in sequence, or one Join
        self.join = None       # "concat" / "eltwise" for multi-input layers
        self.coeffs = None


def _rule_met(rule):
    """NetStateRule against Caffe's TEST state (phase TEST, level 0, no stages)."""
    phase = rule.enum("phase", {0: "TRAIN", 1: "TEST"}, None)
    if phase is not None and phase != "TEST":
        return False
    if rule.get("min_level", "int", 0) > 0 or rule.get("max_level", "int", 0) < 0:
        return False
    return not rule.values("stage")  # the TEST state has no stages; not_stage is then always met


def _included(fields):
    include, exclude = fields.subs("include"), fields.subs("exclude")
    if include and exclude:
        raise fields._error(fields.msg.line, "a layer may have include or exclude rules, not both")
    if include:
        return any(_rule_met(r) for r in include)
    return not any(_rule_met(r) for r in exclude)


def _read_layers(net, source):
    """The included layers of a NetParameter message, new-style or V1."""
    where = _Fields(net, "network", source)
    if where.has("layer") and where.has("layers"):
        line = where.values("layers")[0].line
        raise ValueError(f"{source}:{line}: the network mixes 'layer' and legacy 'layers' definitions")
    v1 = where.has("layers")
    layers = []
    for index, raw in enumerate(where.subs("layers" if v1 else "layer")):
        name_fields = _Fields(raw.msg, f"layer #{index + 1}", source)
        name = name_fields.get("name", "string", f"layer{index + 1}")
        fields = _Fields(raw.msg, f"layer '{name}'", source)
        if v1:
            if fields.has("layer"):
                raise fields._error(raw.msg.line, "V0 layer definitions (a 'layer' inside 'layers') are not "
                                                  "supported; upgrade the file with Caffe's upgrade_net_proto_text")
            type_ = _V1_TYPES[fields.enum("type", _V1_NUMBERS, "NONE")]
            lr_mults = fields.get_list("blobs_lr", "float")
        else:
            type_ = fields.get("type", "string", None)
            if type_ is None:
                raise fields._error(raw.msg.line, "the layer has no type")
            lr_mults = [p.get("lr_mult", "float", None) for p in fields.subs("param")]
        fields.where = f"layer '{name}' ({type_})"
        if not _included(fields):
            continue
        layers.append(_Layer(name, type_, fields.get_list("bottom", "string"), fields.get_list("top", "string"),
                             fields, raw.msg.line, lr_mults))
    return layers


def _shape_of(fields, what):
    dims = fields.get_list("dim", "int")
    if not dims or min(dims) < 1:
        raise fields._error(fields.msg.line, f"{what} must have positive dimensions, got {dims}")
    return tuple(dims)


def _declared_inputs(net, layers, source):
    """{blob name: shape or None} of the network inputs: `input` + `input_shape` / `input_dim`, and Input layers."""
    f = _Fields(net, "network", source)
    names = f.get_list("input", "string")
    shapes = [_shape_of(s, "input_shape") for s in f.subs("input_shape")]
    dims = f.get_list("input_dim", "int")
    if dims:
        if len(dims) != 4 * len(names) or min(dims) < 1:
            raise ValueError(f"{source}: input_dim must give 4 positive numbers per input ({len(names)} inputs), "
                             f"got {dims}")
        shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    if shapes and len(shapes) != len(names):
        raise ValueError(f"{source}: {len(names)} inputs but {len(shapes)} input shapes")
    inputs = {n: (shapes[i] if shapes else None) for i, n in enumerate(names)}
    for layer in layers:
        if layer.type == "Input":
            shapes = [_shape_of(s, "Input shape") for s in layer.fields.sub("input_param").subs("shape")]
            if len(shapes) not in (0, 1, len(layer.tops)):
                raise layer.error(f"{len(shapes)} shapes for {len(layer.tops)} tops")
            for i, top in enumerate(layer.tops):
                inputs[top] = shapes[i if len(shapes) > 1 else 0] if shapes else None
    return inputs


def _pair(layer, fields, name, name_h, name_w, default):
    """A spatial (h, w) from a repeated field (one value for both, or h and w) or the _h/_w pair."""
    values = fields.get_list(name, "uint")
    has_hw = fields.has(name_h) or fields.has(name_w)
    if values and has_hw:
        raise layer.error(f"give {name} or {name_h} and {name_w}, not both")
    if has_hw:
        if not (fields.has(name_h) and fields.has(name_w)):
            raise layer.error(f"{name_h} and {name_w} must both be given")
        return fields.get(name_h, "uint"), fields.get(name_w, "uint")
    if not values:
        if default is None:
            raise layer.error(f"{name} (or {name_h} and {name_w}) is required")
        return default, default
    if len(values) == 1:
        return values[0], values[0]
    if len(values) == 2:
        return values[0], values[1]
    raise layer.error(f"{name} has {len(values)} values; a 2-D layer takes 1 or 2")


def _square(pair):
    """An int when both entries agree (as the model builders write them), else the pair."""
    return pair[0] if pair[0] == pair[1] else tuple(pair)


def _axis(layer, fields, name, ndim, default=1):
    axis = fields.get(name, "int", default)
    return axis + ndim if axis < 0 else axis


def caffe_pool_output_size(size, kernel, stride, pad, ceil):
    """Caffe's pooled length: ceil (or floor) of (size + 2 pad - kernel) / stride, plus one; with padding only,
    minus one when the last window would start at or past size + pad."""
    span = size + 2 * pad - kernel
    n = (-(-span // stride) if ceil else span // stride) + 1
    if pad > 0 and (n - 1) * stride >= size + pad:
        n -= 1
    return n


class _Builder:
    """Converts the renamed layers to modules, propagating shapes and loading (or initializing) weights."""

    def __init__(self, source, weights, weights_source, dtype, rng, strict):
        self.source, self.weights, self.weights_source = source, weights, weights_source
        self.dtype, self.rng, self.strict = dtype, rng, strict
        self.names = set()

    # -------------------------------------------------------------------------------------------- weights
    def blobs(self, layer, expected):
        """The layer's blobs from the caffemodel, checked against `expected` (a list of shapes) and cast to the
        model dtype; None when there is no caffemodel (or the layer is missing and strict is False)."""
        if self.weights is None:
            return None
        if layer.name not in self.weights or not self.weights[layer.name]:
            if not self.strict:
                return None
            have = [n for n, b in self.weights.items() if b]
            raise ValueError(f"{self.weights_source}: no weights for layer '{layer.name}' ({layer.type}); the "
                             f"caffemodel has weights for {have[:12]}{' ...' if len(have) > 12 else ''}")
        blobs = self.weights[layer.name]
        if len(blobs) != len(expected):
            raise ValueError(f"{self.weights_source}: layer '{layer.name}' ({layer.type}) has {len(blobs)} blobs, "
                             f"the prototxt needs {len(expected)} (shapes {expected})")
        out = []
        for i, (blob, shape) in enumerate(zip(blobs, expected)):
            squeeze = tuple(d for d in blob.shape if d != 1)
            if blob.size != int(np.prod(shape)) or squeeze != tuple(d for d in shape if d != 1):
                raise ValueError(f"{self.weights_source}: layer '{layer.name}' ({layer.type}) blob {i} has shape "
                                 f"{blob.shape}, the prototxt needs {shape}")
            out.append(np.array(blob.reshape(shape), dtype=self.dtype))
        return out

    def check_size(self, layer, count):
        """Refuse a layer whose parameters would not fit a sane allocation before allocating them."""
        if count > _MAX_PARAMETERS:
            raise layer.error(f"would need {count:,} parameters (more than {_MAX_PARAMETERS:,})")

    def freeze(self, layer, module, names):
        for name, lr in zip(names, layer.lr_mults):
            if lr == 0 and name in module.params:
                module.freeze(name)

    def child_name(self, wanted):
        name, k = wanted, 1
        while name in self.names:
            k += 1
            name = f"{wanted}_{k}"
        self.names.add(name)
        return name

    # -------------------------------------------------------------------------------------------- layers
    def convert(self, node, shapes):
        """Fill node.modules / node.join for input shapes `shapes`; return the output shape."""
        layer = node.layer
        if layer.type not in SUPPORTED or layer.type in ("Input", "Split"):
            raise layer.error(f"layer type '{layer.type}' cannot be imported; supported: "
                              f"{', '.join(t for t in SUPPORTED if t not in ('Input', 'Split'))}")
        if len(layer.tops) != 1:
            raise layer.error(f"{len(layer.tops)} tops; the layers fastconv imports have exactly one")
        if layer.type not in ("Concat", "Eltwise") and len(shapes) != 1:
            raise layer.error(f"{len(shapes)} bottoms; this layer takes one")
        convert = getattr(self, "_" + layer.type.lower())
        try:
            return convert(node, layer, layer.fields, shapes if layer.type in ("Concat", "Eltwise") else shapes[0])
        except ValueError as e:
            if str(e).startswith(tuple(s for s in (self.source, self.weights_source) if s)):
                raise  # already names the file
            raise layer.error(str(e)) from None

    def _single(self, node, layer, module, in_shape, name=None):
        node.modules.append((self.child_name(name or layer.name), module))
        return module.output_shape(in_shape)

    def _need_4d(self, layer, shape):
        if len(shape) != 4:
            raise layer.error(f"needs a 4-D (N, C, H, W) input, got shape {shape}")

    def _convolution(self, node, layer, fields, shape):
        p = fields.sub("convolution_param")
        self._need_4d(layer, shape)
        if _axis(layer, p, "axis", 4) != 1:
            raise layer.error("only axis 1 (channels) is supported")
        num_output = p.get("num_output", "uint", 0)
        if num_output < 1:
            raise layer.error("num_output must be given and positive")
        kernel = _pair(layer, p, "kernel_size", "kernel_h", "kernel_w", None)
        stride = _pair(layer, p, "stride", "stride_h", "stride_w", 1)
        pad = _pair(layer, p, "pad", "pad_h", "pad_w", 0)
        dilation = p.get_list("dilation", "uint") or [1]
        if len(dilation) > 2:
            raise layer.error(f"dilation has {len(dilation)} values; a 2-D layer takes 1 or 2")
        dilation = (dilation[0], dilation[-1])
        group, bias = p.get("group", "uint", 1), p.get("bias_term", "bool", True)
        channels = shape[1]
        if group < 1 or channels % group or num_output % group:
            raise layer.error(f"group {group} must divide the input channels ({channels}) and num_output "
                              f"({num_output})")
        self.check_size(layer, num_output * (channels // group) * kernel[0] * kernel[1])
        conv = nn.Conv2d(channels, num_output, _square(kernel), stride=_square(stride), padding=_square(pad),
                         dilation=_square(dilation), groups=group, bias=bias, dtype=self.dtype)
        expected = [conv.params["weight"].shape] + ([(num_output,)] if bias else [])
        self.fill(layer, conv, ["weight", "bias"][:len(expected)], expected)
        return self._single(node, layer, conv, shape)

    def fill(self, layer, module, names, expected):
        blobs = self.blobs(layer, expected)
        if blobs is None:
            initializers.kaiming_normal(module.params["weight"], self.rng)
        else:
            for name, value in zip(names, blobs):
                module.params[name][...] = value
        self.freeze(layer, module, names)

    def _innerproduct(self, node, layer, fields, shape):
        p = fields.sub("inner_product_param")
        if _axis(layer, p, "axis", len(shape)) != 1:
            raise layer.error("only axis 1 is supported (the input is flattened from axis 1)")
        num_output = p.get("num_output", "uint", 0)
        if num_output < 1:
            raise layer.error("num_output must be given and positive")
        bias, transpose = p.get("bias_term", "bool", True), p.get("transpose", "bool", False)
        if len(shape) > 2:
            shape = self._single(node, layer, nn.Flatten(), shape, name=f"{layer.name}_flatten")
        self.check_size(layer, shape[1] * num_output)
        linear = nn.Linear(shape[1], num_output, bias=bias, dtype=self.dtype)
        expected = [(shape[1], num_output) if transpose else (num_output, shape[1])] + ([(num_output,)] if bias else [])
        blobs = self.blobs(layer, expected)
        if blobs is None:
            initializers.kaiming_normal(linear.params["weight"], self.rng)
        else:
            linear.params["weight"][...] = blobs[0].T if transpose else blobs[0]
            if bias:
                linear.params["bias"][...] = blobs[1]
        self.freeze(layer, linear, ["weight", "bias"])
        return self._single(node, layer, linear, shape)

    def _pooling(self, node, layer, fields, shape):
        p = fields.sub("pooling_param")
        self._need_4d(layer, shape)
        method = p.enum("pool", {0: "MAX", 1: "AVE", 2: "STOCHASTIC"}, "MAX")
        if method == "STOCHASTIC":
            raise layer.error("STOCHASTIC pooling is not supported")
        ceil = p.enum("round_mode", {0: "CEIL", 1: "FLOOR"}, "CEIL") == "CEIL"
        if any(d != 1 for d in p.get_list("dilation", "uint")):
            raise layer.error("dilated pooling is not supported")
        h, w = shape[2:]
        if p.get("global_pooling", "bool", False):
            if p.has("kernel_size") or p.has("kernel_h") or p.has("kernel_w"):
                raise layer.error("global_pooling takes no kernel size")
            if _pair(layer, p, "pad", "pad_h", "pad_w", 0) != (0, 0) or \
                    _pair(layer, p, "stride", "stride_h", "stride_w", 1) != (1, 1):
                raise layer.error("global_pooling needs pad 0 and stride 1")
            module = nn.GlobalAvgPool2d() if method == "AVE" else nn.MaxPool2d((h, w), 1)
            return self._single(node, layer, module, shape)
        kernel = _pair(layer, p, "kernel_size", "kernel_h", "kernel_w", None)
        stride = _pair(layer, p, "stride", "stride_h", "stride_w", 1)
        pad = _pair(layer, p, "pad", "pad_h", "pad_w", 0)
        if min(kernel) < 1 or min(stride) < 1:
            raise layer.error(f"kernel {kernel} and stride {stride} must be positive")
        for k, s_, pd, axis in zip(kernel, stride, pad, "hw"):
            if pd >= k:
                raise layer.error(f"pad_{axis} {pd} must be smaller than kernel_{axis} {k} (as in Caffe)")
            if pd > k // 2:
                raise layer.error(f"pad_{axis} {pd} is more than half of kernel_{axis} {k}; fastconv's pooling "
                                  f"kernels (PyTorch's rule) do not support it")
        if ceil and pad == (0, 0):
            for size, k, s_ in zip((h, w), kernel, stride):
                n = caffe_pool_output_size(size, k, s_, 0, True)
                if (n - 1) * s_ >= size:
                    raise layer.error(f"with kernel {k} < stride {s_}, no padding and CEIL rounding, Caffe's last "
                                      f"window over an input of {size} lies entirely outside it (Caffe outputs "
                                      f"-FLT_MAX or divides by a non-positive count there); use round_mode: FLOOR")
        kernel_, stride_, pad_ = _square(kernel), _square(stride), _square(pad)
        if method == "MAX":
            module = nn.MaxPool2d(kernel_, stride_, pad_, ceil_mode=ceil)
        else:
            module = nn.AvgPool2d(kernel_, stride_, pad_, ceil_mode=ceil, count_include_pad=True)
        out = self._single(node, layer, module, shape)
        caffe = (caffe_pool_output_size(h, kernel[0], stride[0], pad[0], ceil),
                 caffe_pool_output_size(w, kernel[1], stride[1], pad[1], ceil))
        if out[2:] != caffe:  # the rules agree in every case not refused above; this guards that claim
            raise layer.error(f"output size {out[2:]} differs from Caffe's {caffe}")
        return out

    def _lrn(self, node, layer, fields, shape):
        p = fields.sub("lrn_param")
        if p.enum("norm_region", {0: "ACROSS_CHANNELS", 1: "WITHIN_CHANNEL"}, "ACROSS_CHANNELS") != "ACROSS_CHANNELS":
            raise layer.error("only norm_region ACROSS_CHANNELS is supported")
        size = p.get("local_size", "uint", 5)
        alpha, beta, k = p.get("alpha", "float", 1.0), p.get("beta", "float", 0.75), p.get("k", "float", 1.0)
        if size % 2 == 0:
            raise layer.error(f"local_size must be odd (as in Caffe), got {size}")
        if not k > 0 or not alpha >= 0:
            raise layer.error(f"LRN needs k > 0 and alpha >= 0, got k={k}, alpha={alpha}")
        if len(shape) < 3:
            raise layer.error(f"needs an (N, C, H, W) input, got shape {shape}")
        return self._single(node, layer, nn.LocalResponseNorm(size, alpha, beta, k), shape)

    def _relu(self, node, layer, fields, shape):
        slope = fields.sub("relu_param").get("negative_slope", "float", 0.0)
        if slope != 0:
            raise layer.error(f"negative_slope {slope} (leaky ReLU) is not supported; only 0")
        return self._single(node, layer, nn.ReLU(), shape)

    def _dropout(self, node, layer, fields, shape):
        p = fields.sub("dropout_param")
        ratio = p.get("dropout_ratio", "float", 0.5)
        if not p.get("scale_train", "bool", True):
            raise layer.error("scale_train: false is not supported (fastconv scales at training time, as Caffe's "
                              "default)")
        if not 0 <= ratio < 1:
            raise layer.error(f"dropout_ratio must be in [0, 1), got {ratio}")
        rng = np.random.default_rng(int(self.rng.integers(2 ** 63)))
        return self._single(node, layer, nn.Dropout(ratio, rng=rng), shape)

    def _softmax(self, node, layer, fields, shape):
        if _axis(layer, fields.sub("softmax_param"), "axis", len(shape)) != 1:
            raise layer.error("only axis 1 is supported")
        return self._single(node, layer, nn.Softmax(), shape)

    def _flatten(self, node, layer, fields, shape):
        p = fields.sub("flatten_param")
        if _axis(layer, p, "axis", len(shape)) != 1 or _axis(layer, p, "end_axis", len(shape), -1) != len(shape) - 1:
            raise layer.error("only flattening from axis 1 to the last axis is supported")
        return self._single(node, layer, nn.Flatten(), shape)

    def _batchnorm(self, node, layer, fields, shape):
        p = fields.sub("batch_norm_param")
        if len(shape) < 2:
            raise layer.error(f"needs an (N, C, ...) input, got shape {shape}")
        c = shape[1]
        self.check_size(layer, 4 * c)
        fraction = p.get("moving_average_fraction", "float", 0.999)
        eps = p.get("eps", "float", 1e-5)
        if not 0 <= fraction <= 1 or not eps > 0:
            raise layer.error(f"needs moving_average_fraction in [0, 1] and eps > 0, got {fraction}, {eps}")
        bn = BatchNorm(c, eps=eps, momentum=1 - fraction, use_global_stats=p.get("use_global_stats", "bool", None),
                       dtype=self.dtype)
        blobs = self.blobs(layer, [(c,), (c,), (1,)])
        if blobs is not None:
            factor = blobs[2][0]
            inverse = 0 if factor == 0 else 1 / factor
            bn.buffers["running_mean"][...] = blobs[0] * inverse
            bn.buffers["running_var"][...] = blobs[1] * inverse
        return self._single(node, layer, bn, shape)

    def scale_params(self, layer, shape):
        """(weight, bias or None) of a Scale layer, checked; (ones, zeros) without a caffemodel."""
        p = layer.fields.sub("scale_param")
        if len(layer.bottoms) != 1:
            raise layer.error("a Scale with a second bottom (the scale as an input) is not supported")
        if _axis(layer, p, "axis", len(shape)) != 1 or p.get("num_axes", "int", 1) != 1:
            raise layer.error("only axis 1 with num_axes 1 (one factor per channel) is supported")
        bias = p.get("bias_term", "bool", False)
        channels = shape[1]
        self.check_size(layer, 2 * channels)
        blobs = self.blobs(layer, [(channels,)] + ([(channels,)] if bias else []))
        if blobs is None:
            blobs = [np.ones(channels, self.dtype)] + ([np.zeros(channels, self.dtype)] if bias else [])
        return blobs[0], (blobs[1] if bias else None)

    def _scale(self, node, layer, fields, shape):
        if len(shape) < 2:
            raise layer.error(f"needs an (N, C, ...) input, got shape {shape}")
        weight, bias = self.scale_params(layer, shape)
        module = Scale(shape[1], bias=bias is not None, dtype=self.dtype)
        module.params["weight"][...] = weight
        if bias is not None:
            module.params["bias"][...] = bias
        self.freeze(layer, module, ["weight", "bias"])
        return self._single(node, layer, module, shape)

    def fold_scale(self, bn_node, scale_node, shape):
        """Put a Scale's parameters into the BatchNorm it follows."""
        bn = bn_node.modules[-1][1]
        weight, bias = self.scale_params(scale_node.layer, shape)
        bn.params["weight"][...] = weight
        if bias is not None:
            bn.params["bias"][...] = bias
        else:
            bn.freeze("bias")  # Caffe has no shift here: keep ours at zero
        self.freeze(scale_node.layer, bn, ["weight", "bias"])

    def _concat(self, node, layer, fields, shapes):
        p = fields.sub("concat_param")
        ndim = len(shapes[0])
        axis = _axis(layer, p, "axis", ndim) if p.has("axis") else p.get("concat_dim", "uint", 1)
        if axis != 1:
            raise layer.error(f"only concatenation along axis 1 (channels) is supported, got axis {axis}")
        module = ConcatInputs()
        out = module.output_shape(shapes)
        node.join = "concat"
        node.modules.append((self.child_name(layer.name), module))
        return out

    def _eltwise(self, node, layer, fields, shapes):
        p = fields.sub("eltwise_param")
        op = p.enum("operation", {0: "PROD", 1: "SUM", 2: "MAX"}, "SUM")
        if op != "SUM":
            raise layer.error(f"Eltwise operation {op} is not supported; only SUM")
        coeffs = p.get_list("coeff", "float") or [1.0] * len(shapes)
        if len(coeffs) != len(shapes):
            raise layer.error(f"{len(coeffs)} coefficients for {len(shapes)} bottoms")
        module = EltwiseSum(coeffs)
        out = module.output_shape(shapes)
        node.join, node.coeffs = "eltwise", coeffs
        node.modules.append((self.child_name(layer.name), module))
        return out


# ------------------------------------------------------------------------------------------------ assembly

class _NotStructured(Exception):
    """The DAG is not a nest of chains, Concat forks and two-branch residual sums: build a Graph instead."""


def _structure(nodes, consumers, input_id, output_id):
    """The network as Sequential / Concat / Residual containers, or _NotStructured."""
    items, end, join = _walk(nodes, consumers, input_id, output_id, 0)
    if join is not None or end != output_id:
        raise _NotStructured
    return _sequential(items)


def _walk(nodes, consumers, value, stop, depth):
    """Follow the chain from blob `value`: returns (items, last blob, index of the join node it stopped at, or
    None when it reached `stop`). Forks are resolved recursively into containers."""
    if depth > 100:
        raise _NotStructured
    items = []
    while value != stop:
        users = consumers.get(value, [])
        if not users:
            raise _NotStructured
        if len(users) == 1:
            node = nodes[users[0]]
            if node.join is not None:
                return items, value, users[0]
            items.extend(node.modules)
            value = node.output
            continue
        branches = []  # (items, end blob) per consumer
        joins = set()
        for u in users:
            node = nodes[u]
            if node.join is not None:  # the fork blob itself enters the join: an identity branch
                branches.append(([], value))
                joins.add(u)
                continue
            sub, end, j = _walk(nodes, consumers, node.output, stop, depth + 1)
            if j is None:
                raise _NotStructured
            branches.append((list(node.modules) + sub, end))
            joins.add(j)
        if len(joins) != 1:
            raise _NotStructured
        j = joins.pop()
        join = nodes[j]
        if Counter(join.inputs) != Counter(end for _, end in branches):
            raise _NotStructured
        # order the branches as the join's bottoms
        pending = list(branches)
        ordered = []
        for blob in join.inputs:
            k = next(k for k, (_, end) in enumerate(pending) if end == blob)
            ordered.append(pending.pop(k)[0])
        name, _ = join.modules[0]
        if join.join == "concat":
            concat = nn.Concat()
            for b in ordered:
                key = b[0][0] if b else "identity"
                while key in concat.children:
                    key += "_"
                concat.add_child(key, _sequential(b))
            items.append((name, concat))
        else:
            if len(ordered) != 2 or any(c != 1 for c in join.coeffs):
                raise _NotStructured
            body, short = sorted(ordered, key=len, reverse=True)  # stable: ties keep the bottom order
            items.append((name, nn.Residual(_sequential(body), _sequential(short) if short else None)))
        value = join.output
    return items, value, None


def _sequential(items):
    seq = nn.Sequential()
    for name, module in items:
        seq.add_child(name, module)
    return seq


def _graph(nodes, input_id, output_id):
    """A Graph of the converted nodes; a node of several modules (InnerProduct's Flatten + Linear) chains them
    through private blob ids."""
    steps, private = [], max([input_id, output_id] + [n.output for n in nodes]) + 1
    for node in nodes:
        ins = node.inputs
        for k, (name, module) in enumerate(node.modules):
            if k == len(node.modules) - 1:
                out = node.output
            else:
                out, private = private, private + 1
            steps.append((name, module, ins, out))
            ins = (out,)
    return Graph(steps, input_id, output_id)


# ------------------------------------------------------------------------------------------------ entry point

def _rename_blobs(layers, inputs):
    """Give every top a new blob id, so in-place layers and fan-out become explicit (Split tops alias their
    bottom). Returns (nodes, {input id: name}, {blob name: id of its last version})."""
    current, input_names, nodes = {}, {}, []
    for name in inputs:
        current[name] = len(input_names)
        input_names[current[name]] = name
    next_id = len(input_names)
    for layer in layers:
        if layer.type == "Input":
            continue
        missing = [b for b in layer.bottoms if b not in current]
        if missing:
            raise layer.error(f"bottom blob(s) {missing} are not produced by any earlier layer or input")
        if layer.type == "Split":
            if len(layer.bottoms) != 1:
                raise layer.error("a Split has one bottom")
            for top in layer.tops:
                current[top] = current[layer.bottoms[0]]
            continue
        nodes.append(_Node(layer, tuple(current[b] for b in layer.bottoms), next_id if layer.tops else None))
        for top in layer.tops:
            current[top] = next_id
            next_id += 1
    return nodes, input_names, current


def _select(nodes, input_names, current, output, source):
    """The nodes the output blob depends on, the one input id they read, and the output id. The default output
    is the one blob no layer consumes (Caffe's net outputs)."""
    if output is None:
        used = {i for n in nodes for i in n.inputs}
        sinks = {}
        for name, v in current.items():
            if v not in used and v not in input_names:
                sinks.setdefault(v, name)
        if len(sinks) != 1:
            raise ValueError(f"{source}: the network has {len(sinks)} output blobs {list(sinks.values())}; pass "
                             f"output= to pick one")
        output = next(iter(sinks.values()))
    if output not in current:
        raise ValueError(f"{source}: no blob named {output!r}")
    output_id = current[output]
    if output_id in input_names:
        raise ValueError(f"{source}: the output {output!r} is the network input")
    producer = {}
    for k, node in enumerate(nodes):
        for t in range(len(node.layer.tops)):
            producer[node.output + t] = k
    needed, stack = set(), [output_id]
    while stack:
        v = stack.pop()
        if v in producer and producer[v] not in needed:
            needed.add(producer[v])
            stack.extend(nodes[producer[v]].inputs)
    nodes = [n for k, n in enumerate(nodes) if k in needed]
    for node in nodes:
        if node.layer.type not in SUPPORTED:
            raise node.layer.error(f"layer type '{node.layer.type}' cannot be imported; supported: "
                                   f"{', '.join(t for t in SUPPORTED if t not in ('Input', 'Split'))}")
    used_inputs = sorted({i for n in nodes for i in n.inputs if i in input_names})
    if len(used_inputs) != 1:
        raise ValueError(f"{source}: the output {output!r} depends on {len(used_inputs)} inputs "
                         f"{[input_names[i] for i in used_inputs]}; fastconv models take exactly one")
    return nodes, used_inputs[0], output_id


def _consumers(nodes):
    """{blob id: indices of the nodes reading it} (a node reading a blob twice is listed twice)."""
    consumers = {}
    for k, node in enumerate(nodes):
        for i in node.inputs:
            consumers.setdefault(i, []).append(k)
    return consumers


def _convert_all(builder, nodes, input_id, shape, output_id):
    """Convert the nodes in prototxt order, propagating shapes from the input. A Scale reading a BatchNorm's
    output, as that output's only consumer, is folded into the BatchNorm and its blob aliased to the BatchNorm's.
    Returns (the nodes that remain, the output id after aliasing)."""
    builder.names.update(n.layer.name for n in nodes)
    consumers = _consumers(nodes)
    shapes, alias, kept = {input_id: shape}, {}, []
    for node in nodes:
        node.inputs = tuple(alias.get(i, i) for i in node.inputs)
        if node.layer.type == "Scale" and len(node.inputs) == 1:
            src = node.inputs[0]
            bn = next((m for m in kept if m.output == src and m.layer.type == "BatchNorm"), None)
            if bn is not None and len(consumers.get(src, [])) == 1:
                builder.fold_scale(bn, node, shapes[src])
                alias[node.output] = src
                continue
        builder.names.discard(node.layer.name)  # its own name is free for its module
        shapes[node.output] = builder.convert(node, [shapes[i] for i in node.inputs])
        kept.append(node)
    return kept, alias.get(output_id, output_id)


def _read_text(path):
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the prototxt: {e.strerror}") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a text prototxt (byte {e.start} is not UTF-8; is it the binary "
                         f".caffemodel?)") from None


def load_caffe(prototxt, caffemodel=None, *, input_shape=None, output=None, dtype=np.float32, strict=True,
               containers=True, seed=0):
    """Build a fastconv model from a Caffe network definition and, when given, its trained weights.

    Parameters
    ----------
    prototxt : path of the text network definition (a deploy net: Input layer or input/input_shape/input_dim).
    caffemodel : path of the binary weights, or None to initialize (He normal weights from `seed`, zero biases,
        unit BatchNorm/Scale).
    input_shape : (N, C, H, W) or (C, H, W) (or (N, D) / (D,) for a net of InnerProducts), overriding or
        supplying the declared input shape; layers are sized for it (global MAX pooling, InnerProduct's K).
    output : name of the output blob; by default the one blob that no layer consumes.
    dtype : float32 (default) or float64 parameters.
    strict : a prototxt layer with parameters but no weights in the caffemodel is an error (True) or keeps its
        initialization (False, as Caffe's CopyTrainedLayersFrom).
    containers : map the net to Sequential / Concat / Residual where it has that shape (True) or always build a
        Graph (False).
    seed : seeds initialization and the Dropout layers' streams.

    Returns the model in eval mode (Caffe's TEST phase), with ``name`` (the net's name) and ``input_shape``
    (the input shape without the batch axis) set. Every problem with the files is a ValueError naming the file.
    """
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    source = os.fspath(prototxt)
    net = parse_prototxt(_read_text(prototxt), source)
    layers = _read_layers(net, source)
    inputs = _declared_inputs(net, layers, source)

    nodes, input_names, current = _rename_blobs(layers, inputs)
    nodes, input_id, output_id = _select(nodes, input_names, current, output, source)
    shape = inputs[input_names[input_id]]
    if input_shape is not None:
        shape = tuple(int(d) for d in input_shape)
        if len(shape) in (1, 3):
            shape = (1,) + shape
    if shape is None:
        raise ValueError(f"{source}: the input {input_names[input_id]!r} has no declared shape; pass "
                         f"input_shape=(N, C, H, W)")
    if len(shape) not in (2, 4) or min(shape) < 1:
        raise ValueError(f"{source}: the input shape must be (N, C, H, W) or (N, D) with positive sizes, got {shape}")

    weights = None if caffemodel is None else read_caffemodel(caffemodel)
    builder = _Builder(source, weights, None if caffemodel is None else os.fspath(caffemodel), dtype,
                       np.random.default_rng(seed), strict)
    nodes, output_id = _convert_all(builder, nodes, input_id, shape, output_id)
    model = None
    if containers:
        try:
            model = _structure(nodes, _consumers(nodes), input_id, output_id)
        except _NotStructured:
            model = None
    if model is None:
        model = _graph(nodes, input_id, output_id)
    model.name = _Fields(net, "network", source).get("name", "string", os.path.splitext(os.path.basename(source))[0])
    model.input_shape = tuple(shape[1:])
    model.output_shape((1,) + model.input_shape)
    return model.eval()
