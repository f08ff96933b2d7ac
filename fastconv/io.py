"""Saving and loading models, and writing files atomically.

Saved models
    save(model, "net.safetensors")   safetensors, written here (no dependency on the `safetensors` package, no
                                     pickle): an 8-byte little-endian header length, a JSON header
                                     {tensor name: {"dtype", "shape", "data_offsets": [begin, end]},
                                     "__metadata__": {str: str}}, then the raw little-endian tensor bytes
    save(model, "net.npz")           NumPy's zip of .npy arrays plus a "__metadata__" JSON string array
    load(path)                       rebuilds the model from the architecture recorded in the metadata
                                     (``fastconv.models.get_model(name, **options)``) and loads the weights

Tensors are the model's ``state_dict()`` (parameters and buffers by dotted name). The metadata holds
``fastconv.arch``: the JSON of ``model.arch = {"name": ..., "options": {...}}`` (set by get_model), plus any
string entries passed as ``metadata=``. Every malformed file -- bad header length, header that is not JSON,
offsets past the end of the file, dtypes or shapes that do not fit the architecture -- is a ValueError naming
the file and what is wrong.

Atomic writes
    with atomic_write(path) as f: ...  the bytes go to a temporary file in the same directory, which is flushed,
                                      fsync'ed and renamed over `path` (then the directory is fsync'ed): a reader
                                      or a crash sees the old file or the new one, never a part.
"""
import contextlib
import inspect
import json
import math
import os
import struct
import tempfile
import zipfile

import numpy as np

__all__ = ["save", "load", "read_metadata", "atomic_write"]


# ================================================================================================ atomic writes

def _fsync_directory(directory):
    """Make a rename in `directory` durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def temporary_prefix(path):
    """Name prefix of the temporary files atomic_write(path) creates (".<name>."; suffix ".tmp")."""
    return "." + os.path.basename(os.fspath(path)) + "."


@contextlib.contextmanager
def atomic_write(path):
    """Context manager yielding a binary file; on a clean exit its content replaces `path` atomically.

    On an exception (KeyboardInterrupt included) the temporary file is removed and `path` is untouched. A process
    killed outright leaves a ``.<name>.*.tmp`` file behind, never a partial `path`;
    :func:`remove_temporaries` clears those.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=temporary_prefix(path), suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)      # mkstemp makes the file 0600; give it the permissions open() would
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_directory(directory)


def remove_temporaries(path):
    """Delete the temporary files a killed atomic_write(path) left; returns their paths."""
    directory = os.path.dirname(os.path.abspath(os.fspath(path)))
    prefix = temporary_prefix(path)
    removed = []
    for name in os.listdir(directory):
        if name.startswith(prefix) and name.endswith(".tmp"):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
                removed.append(os.path.join(directory, name))
    return removed


# numpy >= 2.1 lets savez refuse object arrays itself; we never hand it one anyway (see _check_plain)
SAVEZ_OPTIONS = {"allow_pickle": False} if "allow_pickle" in inspect.signature(np.savez).parameters else {}


def check_plain_array(name, a):
    """Refuse arrays that would need pickle (object, structured or void dtypes)."""
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "biufcU":
        raise TypeError(f"{name}: only numeric and string arrays can be saved, got "
                        f"{getattr(a, 'dtype', type(a).__name__)}")


# ================================================================================================ save / load

# safetensors dtype names <-> little-endian NumPy dtypes
_ST_DTYPES = {"F64": "<f8", "F32": "<f4", "F16": "<f2", "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1",
              "U64": "<u8", "U32": "<u4", "U16": "<u2", "U8": "u1", "BOOL": "?"}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}
_MAX_HEADER = 100 * 2 ** 20          # the reference implementation's limit as well
_METADATA_KEY = "__metadata__"
_ARCH_KEY = "fastconv.arch"


def _arch_json(model):
    """The JSON string of model.arch with options made JSON-safe (dtype -> its name, generators dropped)."""
    arch = getattr(model, "arch", None)
    if arch is None:
        return None
    options = {}
    for k, v in dict(arch.get("options", {})).items():
        if k == "rng" or isinstance(v, np.random.Generator):
            continue                 # the weights are saved; a generator only matters for a fresh init
        if k == "dtype" or isinstance(v, (np.dtype, type)):
            v = np.dtype(v).name
        elif isinstance(v, np.generic):
            v = v.item()
        options[k] = v
    try:
        return json.dumps({"name": arch["name"], "options": options}, sort_keys=True)
    except TypeError as e:
        raise TypeError(f"model.arch options must be JSON values to be saved: {e}") from None


def _metadata_for(model, metadata):
    meta = {"format": "fastconv", "fastconv.version": _version()}
    arch = _arch_json(model)
    if arch is not None:
        meta[_ARCH_KEY] = arch
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or not isinstance(v, str):
            raise TypeError(f"metadata entries must be str -> str (safetensors' rule), got {k!r}: {v!r}")
        meta[k] = v
    return meta


def _version():
    from . import __version__
    return __version__


def save(model, path, metadata=None):
    """Write `model`'s parameters and buffers to `path`: safetensors for ``.safetensors``, NumPy for ``.npz``.

    metadata : optional dict str -> str stored with the weights (read back by :func:`read_metadata` and as
    ``model.metadata`` after :func:`load`). The architecture (``model.arch``, set by
    ``fastconv.models.get_model``) is recorded so that ``load(path)`` can rebuild the model; a model built by
    hand saves fine but needs ``load(path, model=...)``. The file is written atomically. Returns `path`.
    """
    target, path = path, os.fspath(path)
    state = model.state_dict()
    meta = _metadata_for(model, metadata)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        payload = _safetensors_bytes(state, meta)
        with atomic_write(path) as f:
            f.write(payload)
    elif ext == ".npz":
        if _METADATA_KEY in state:
            raise ValueError(f"a model tensor may not be called {_METADATA_KEY!r}")
        arrays = {k: np.ascontiguousarray(v) for k, v in state.items()}
        for k, v in arrays.items():
            check_plain_array(k, v)
        arrays[_METADATA_KEY] = np.array(json.dumps(meta, sort_keys=True))
        with atomic_write(path) as f:
            np.savez(f, **arrays, **SAVEZ_OPTIONS)
    else:
        raise ValueError(f"cannot tell the format of {path!r}: use a .safetensors or .npz file name")
    return target


def _safetensors_bytes(state, meta):
    header, blobs, offset = {}, [], 0
    for name, a in state.items():
        a = np.asarray(a)
        dtype = a.dtype.newbyteorder("<") if a.dtype.byteorder == ">" else a.dtype
        if np.dtype(dtype) not in _ST_NAMES:
            raise TypeError(f"tensor {name!r}: dtype {a.dtype} has no safetensors equivalent")
        blob = np.ascontiguousarray(a, dtype=dtype).tobytes()
        header[name] = {"dtype": _ST_NAMES[np.dtype(dtype)], "shape": list(a.shape),
                        "data_offsets": [offset, offset + len(blob)]}
        blobs.append(blob)
        offset += len(blob)
    header[_METADATA_KEY] = meta
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)     # pad with spaces so the tensor data starts 8-byte aligned
    return struct.pack("<Q", len(text)) + text + b"".join(blobs)


def _read_safetensors(path):
    """(tensors, metadata) of a safetensors file, every structural fault a ValueError naming the file."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError(f"{path}: not a safetensors file: {len(raw)} bytes, too short for the 8-byte header "
                         f"length (truncated?)")
    (n,) = struct.unpack("<Q", raw[:8])
    if n > len(raw) - 8:
        raise ValueError(f"{path}: bad header length {n}: the file has only {len(raw) - 8} bytes after it "
                         f"(truncated, or not a safetensors file)")
    if n > _MAX_HEADER:
        raise ValueError(f"{path}: bad header length {n}: more than {_MAX_HEADER} bytes")
    try:
        header = json.loads(raw[8:8 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: the header is not valid JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: the header must be a JSON object, got {type(header).__name__}")
    meta = header.pop(_METADATA_KEY, {}) or {}
    if not isinstance(meta, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in meta.items()):
        raise ValueError(f"{path}: {_METADATA_KEY} must be an object of strings")
    data = memoryview(raw)[8 + n:]
    tensors = {}
    for name, info in header.items():
        if not isinstance(info, dict) or not {"dtype", "shape", "data_offsets"} <= set(info):
            raise ValueError(f"{path}: tensor {name!r} needs dtype, shape and data_offsets, got {info!r}")
        if info["dtype"] not in _ST_DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']!r}; supported: "
                             f"{', '.join(_ST_DTYPES)}")
        shape, offsets = info["shape"], info["data_offsets"]
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise ValueError(f"{path}: tensor {name!r} has a bad shape {shape!r}")
        if (not isinstance(offsets, list) or len(offsets) != 2 or not all(isinstance(o, int) for o in offsets)
                or not 0 <= offsets[0] <= offsets[1]):
            raise ValueError(f"{path}: tensor {name!r} has bad data_offsets {offsets!r}")
        dtype = np.dtype(_ST_DTYPES[info["dtype"]])
        begin, end = offsets
        if end > len(data):
            raise ValueError(f"{path}: tensor {name!r} data_offsets [{begin}, {end}] run past the end of the data "
                             f"({len(data)} bytes; truncated file?)")
        expected = math.prod(shape) * dtype.itemsize
        if end - begin != expected:
            raise ValueError(f"{path}: tensor {name!r}: data_offsets [{begin}, {end}] hold {end - begin} bytes but "
                             f"{info['dtype']} {shape} needs {expected}")
        tensors[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))
    return tensors, meta


def _read_npz(path):
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as e:
        raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: {e})") from None
    meta = {}
    if _METADATA_KEY in arrays:
        try:
            meta = json.loads(str(arrays.pop(_METADATA_KEY)))
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: {_METADATA_KEY} is not valid JSON ({e})") from None
        if not isinstance(meta, dict):
            raise ValueError(f"{path}: {_METADATA_KEY} must be a JSON object")
    return arrays, meta


def _read(path):
    path = os.fspath(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    return _read_npz(path) if magic == b"PK\x03\x04" else _read_safetensors(path)


def read_metadata(path):
    """The metadata dict (str -> str) of a saved model, without building it."""
    return _read(path)[1]


def _build_from_metadata(path, meta):
    if _ARCH_KEY not in meta:
        raise ValueError(f"{path}: no architecture recorded (metadata {_ARCH_KEY!r} missing): it was saved from a "
                         f"model not built by fastconv.models.get_model; pass the model: load(path, model=...)")
    try:
        arch = json.loads(meta[_ARCH_KEY])
        name, options = arch["name"], dict(arch.get("options", {}))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: metadata {_ARCH_KEY!r} is not a valid architecture record ({e})") from None
    from .models import get_model
    options.pop("seed", None)
    options["init"] = None           # the weights come from the file; skip drawing random ones
    try:
        return get_model(name, **options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: cannot rebuild architecture {name!r} with options {options}: {e}") from None


def load(path, model=None):
    """Load a model saved by :func:`save` (format detected from the content).

    Without `model` the architecture recorded in the file is rebuilt with ``fastconv.models.get_model``; with
    `model`, the weights are loaded into it. The file's tensors must match the model's parameters and buffers
    exactly (names, shapes and dtypes; convert afterwards with ``.astype``). Returns the model (a rebuilt one
    in eval mode; a given one in the mode it was) with ``model.metadata`` set to the file's metadata. Malformed files and mismatches raise ValueError
    naming the file.
    """
    path = os.fspath(path)
    tensors, meta = _read(path)
    rebuilt = model is None
    if rebuilt:
        model = _build_from_metadata(path, meta)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: the tensors do not match the model: missing {missing[:8]}"
                         f"{'...' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
                         f"{'...' if len(unexpected) > 8 else ''}")
    for name, want in expected.items():
        got = tensors[name]
        if got.shape != want.shape:
            raise ValueError(f"{path}: tensor {name!r} has shape {got.shape} but the model's is {want.shape}")
        if got.dtype != want.dtype:
            raise ValueError(f"{path}: tensor {name!r} is {got.dtype} but the model's is {want.dtype}")
    model.load_state_dict(tensors)
    model.metadata = dict(meta)
    return model.eval() if rebuilt else model
