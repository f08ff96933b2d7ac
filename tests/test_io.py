"""fastconv.io: safetensors and npz round trips, the file layout, corrupt files, atomic writes."""
import json
import os
import re
import struct

import numpy as np
import pytest

import fastconv
from fastconv import io, nn
from fastconv.models import get_model


def lenet(dtype=np.float32, seed=0):
    return get_model("lenet5", dtype=dtype, seed=seed)


def images(n=5, shape=(1, 32, 32), dtype=np.float32, seed=1):
    return np.random.default_rng(seed).normal(size=(n,) + shape).astype(dtype)


def outputs(model, x):
    model.eval()
    return model.forward(x)


def write_safetensors(path, tensors, metadata=None, header_edit=None):
    """An independent writer of the format (spec: u64 LE header size, JSON header, packed LE data)."""
    names = {np.dtype("<f4"): "F32", np.dtype("<f8"): "F64", np.dtype("<i8"): "I64"}
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        raw = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": names[a.dtype], "shape": list(a.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    if metadata is not None:
        header["__metadata__"] = metadata
    if header_edit is not None:
        header_edit(header)
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))
    return path


def lenet_file(tmp_path, name="bad.safetensors", header_edit=None, tensors_edit=None):
    model = lenet()
    tensors = model.state_dict()
    if tensors_edit is not None:
        tensors_edit(tensors)
    meta = {"fastconv.arch": json.dumps(model.arch | {"options": {"dtype": "float32"}})}
    return write_safetensors(tmp_path / name, tensors, meta, header_edit)


# ------------------------------------------------------------------------------------------------- round trips

@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_rebuilds_the_model_and_gives_identical_predictions(tmp_path, ext, dtype):
    model = lenet(dtype=dtype, seed=7)
    path = fastconv.save(model, tmp_path / f"net{ext}", metadata={"note": "digits"})
    loaded = fastconv.load(path)
    assert loaded is not model and loaded.arch["name"] == "lenet5" and loaded.input_shape == (1, 32, 32)
    assert not loaded.training and loaded.metadata["note"] == "digits"
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert a.dtype == b.dtype == dtype
        np.testing.assert_array_equal(a, b, err_msg=name)
    x = images(dtype=dtype)
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))


@pytest.mark.parametrize("ext", [".safetensors", ".npz"])
def test_round_trip_keeps_batchnorm_buffers(tmp_path, ext):
    model = get_model("resnet18", num_classes=3, input_size=32, seed=2)
    rng = np.random.default_rng(3)
    for _, m in model.named_modules():
        for k, b in m.buffers.items():          # non-default running statistics, so loading them is visible
            b[...] = rng.uniform(0.5, 1.5, size=b.shape)
    loaded = fastconv.load(fastconv.save(model, tmp_path / f"r{ext}"))
    x = images(2, (3, 32, 32))
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))


def test_options_are_recorded_and_rebuild_the_same_architecture(tmp_path):
    model = get_model("lenet5", num_classes=4, in_channels=3, input_size=36, dtype=np.float64, seed=5)
    meta = io.read_metadata(fastconv.save(model, tmp_path / "m.safetensors"))
    arch = json.loads(meta["fastconv.arch"])
    assert arch == {"name": "lenet5", "options": {"num_classes": 4, "in_channels": 3, "input_size": 36,
                                                  "dtype": "float64", "seed": 5}}
    loaded = fastconv.load(tmp_path / "m.safetensors")
    assert loaded.input_shape == (3, 36, 36)
    x = images(3, (3, 36, 36), np.float64)
    np.testing.assert_array_equal(outputs(loaded, x), outputs(model, x))


def test_safetensors_layout_matches_the_specification(tmp_path):
    model = lenet(seed=4)
    path = fastconv.save(model, tmp_path / "m.safetensors")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    assert (8 + n) % 8 == 0                                   # data aligned
    header = json.loads(raw[8:8 + n])
    meta = header.pop("__metadata__")
    assert all(isinstance(v, str) for v in meta.values()) and json.loads(meta["fastconv.arch"])["name"] == "lenet5"
    spans = sorted(tuple(h["data_offsets"]) for h in header.values())
    assert spans[0][0] == 0 and spans[-1][1] == len(raw) - 8 - n
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # no holes, no overlap
    for name, a in model.state_dict().items():
        h = header[name]
        assert h["dtype"] == "F32" and h["shape"] == list(a.shape)
        begin, end = h["data_offsets"]
        assert raw[8 + n + begin:8 + n + end] == a.astype("<f4").tobytes()


def test_the_safetensors_package_reads_our_files_and_we_read_its(tmp_path):
    st = pytest.importorskip("safetensors.numpy")
    from safetensors import safe_open
    model = lenet(dtype=np.float64, seed=6)
    path = fastconv.save(model, tmp_path / "ours.safetensors", metadata={"k": "v"})
    theirs = st.load_file(str(path))
    assert theirs.keys() == model.state_dict().keys()
    for name, a in model.state_dict().items():
        np.testing.assert_array_equal(theirs[name], a)
        assert theirs[name].dtype == a.dtype
    with safe_open(str(path), framework="np") as f:
        assert f.metadata()["k"] == "v" and "fastconv.arch" in f.metadata()
    other = tmp_path / "theirs.safetensors"
    st.save_file(model.state_dict(), str(other), metadata=io.read_metadata(path))
    x = images(dtype=np.float64)
    np.testing.assert_array_equal(outputs(fastconv.load(other), x), outputs(model, x))


def test_hand_built_model_needs_the_model_to_load(tmp_path):
    rng = np.random.default_rng(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, rng=rng), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3, rng=rng))
    path = fastconv.save(model, tmp_path / "h.npz")
    with pytest.raises(ValueError, match="no architecture recorded"):
        fastconv.load(path)
    fresh = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Flatten(), nn.Linear(8, 3))
    assert fastconv.load(path, model=fresh) is fresh and fresh.training
    x = images(2, (1, 4, 4))
    np.testing.assert_array_equal(outputs(fresh, x), outputs(model, x))


def test_save_refuses_unknown_extensions_and_non_string_metadata(tmp_path):
    with pytest.raises(ValueError, match=r"\.safetensors or \.npz"):
        fastconv.save(lenet(), tmp_path / "m.pt")
    with pytest.raises(TypeError, match="str -> str"):
        fastconv.save(lenet(), tmp_path / "m.npz", metadata={"epochs": 3})


# ------------------------------------------------------------------------------------------------- corrupt files

def expect_error(path, what):
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + what):
        fastconv.load(path)


def test_too_short_for_a_header_length(tmp_path):
    path = tmp_path / "short.safetensors"
    path.write_bytes(b"\x10\x00\x00")
    expect_error(path, "too short")


def test_header_length_beyond_the_file(tmp_path):
    good = fastconv.save(lenet(), tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "len.safetensors"
    path.write_bytes(struct.pack("<Q", len(good)) + good[8:])
    expect_error(path, "bad header length")


def test_header_that_is_not_json(tmp_path):
    path = tmp_path / "json.safetensors"
    text = b'{"a": {"dtype": "F32", '
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"\0" * 64)
    expect_error(path, "not valid JSON")


def test_truncated_file_has_offsets_past_the_end(tmp_path):
    good = fastconv.save(lenet(), tmp_path / "good.safetensors").read_bytes()
    path = tmp_path / "cut.safetensors"
    path.write_bytes(good[:-1000])
    expect_error(path, "past the end")


def test_offsets_that_do_not_fit_dtype_and_shape(tmp_path):
    def shrink(header):
        header["features.c1.weight"]["data_offsets"][1] -= 4
    expect_error(lenet_file(tmp_path, header_edit=shrink), "needs")


def test_unsupported_dtype(tmp_path):
    def bf16(header):
        header["features.c1.bias"]["dtype"] = "BF16"
    expect_error(lenet_file(tmp_path, header_edit=bf16), "unsupported dtype 'BF16'")


def test_shape_that_does_not_fit_the_architecture(tmp_path):
    def smaller_kernel(t):
        t["features.c1.weight"] = np.zeros((6, 1, 3, 3), np.float32)
    expect_error(lenet_file(tmp_path, tensors_edit=smaller_kernel), r"features.c1.weight.*\(6, 1, 3, 3\).*\(6, 1, 5, 5\)")


def test_dtype_that_does_not_fit_the_architecture(tmp_path):
    def wider(t):
        t["classifier.output.bias"] = t["classifier.output.bias"].astype(np.float64)
    expect_error(lenet_file(tmp_path, tensors_edit=wider), "classifier.output.bias.*float64.*float32")


def test_missing_tensor(tmp_path):
    def drop(t):
        del t["classifier.f6.weight"]
    expect_error(lenet_file(tmp_path, tensors_edit=drop), r"missing \['classifier.f6.weight'\]")


def test_architecture_metadata_that_is_not_json(tmp_path):
    path = write_safetensors(tmp_path / "arch.safetensors", lenet().state_dict(), {"fastconv.arch": "lenet5("})
    expect_error(path, "not a valid architecture record")


def test_truncated_npz(tmp_path):
    good = fastconv.save(lenet(), tmp_path / "good.npz").read_bytes()
    path = tmp_path / "cut.npz"
    path.write_bytes(good[:len(good) // 2])
    expect_error(path, "not a readable .npz")


# ------------------------------------------------------------------------------------------------- atomic writes

def test_atomic_write_replaces_the_file_and_syncs_file_and_directory(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd)))
    umask = os.umask(0o022)
    try:
        with io.atomic_write(target) as f:
            f.write(b"new")
            assert target.read_bytes() == b"old"           # nothing visible before the rename
    finally:
        os.umask(umask)
    assert target.read_bytes() == b"new"
    assert synced[-1] == str(tmp_path) and synced[0].startswith(str(tmp_path / ".f.bin."))
    assert target.stat().st_mode & 0o777 == 0o644        # what open() would have made, not mkstemp's 0600
    assert os.listdir(tmp_path) == ["f.bin"]


@pytest.mark.parametrize("error", [OSError, KeyboardInterrupt])
def test_atomic_write_interrupted_leaves_the_old_file_and_no_temporary(tmp_path, error):
    target = tmp_path / "f.bin"
    target.write_bytes(b"old")
    with pytest.raises(error):
        with io.atomic_write(target) as f:
            f.write(b"half of the new")
            raise error("stop")
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]


def test_remove_temporaries_clears_what_a_killed_writer_left(tmp_path):
    target = tmp_path / "checkpoint.npz"
    (tmp_path / ".checkpoint.npz.abc123.tmp").write_bytes(b"partial")
    (tmp_path / ".other.npz.x.tmp").write_bytes(b"not ours")
    assert [os.path.basename(p) for p in io.remove_temporaries(target)] == [".checkpoint.npz.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == [".other.npz.x.tmp"]
