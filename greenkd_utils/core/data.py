"""Image classification data sets as in-memory uint8 tensors.

Every data set comes back as an :class:`ImageDataset`: uint8 images of shape
``(N, C, H, W)``, int64 labels, the class names and the per-channel mean and
std of the training images (for normalisation). Augmentation and
normalisation happen later, on batches, so the same arrays serve every run.

Four data sets are known (:data:`DATASETS`):

``digits``
    scikit-learn's bundled 8x8 handwritten digits (real data that ships with
    the package, so the demo and smoke profiles never need the network).
``cifar10`` / ``cifar100``
    The original "python version" pickle batches, read from a data root.
``tinyimagenet``
    The Stanford CS231n Tiny ImageNet folder tree, read from a data root
    (its ``val`` split is used as the test split: the official test labels
    were never published).

The paper profile reads a local data root and fails with a
:class:`DatasetNotFoundError` that says exactly what to download, from where,
and where to put it.
"""

from __future__ import annotations

import logging
import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from tqdm.auto import tqdm

logger = logging.getLogger(__name__)

__all__ = [
    "DATASETS",
    "DATA_ROOT_ENV",
    "DatasetCorruptError",
    "DatasetNotFoundError",
    "ImageDataset",
    "load_dataset",
]

DATASETS = ("digits", "cifar10", "cifar100", "tinyimagenet")

#: Environment variable consulted when ``load_dataset`` gets no ``root``.
DATA_ROOT_ENV = "GREENKD_DATA_ROOT"

PathLike = Union[str, "os.PathLike[str]"]
TensorPair = Tuple[torch.Tensor, torch.Tensor]

# Images per chunk when computing channel statistics: bounds the float copy
# to a few hundred MB even for Tiny ImageNet's 100k images.
_STATS_CHUNK = 4096


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where they should be.

    The message says what to download, from where, and where to put it.
    """


class DatasetCorruptError(DatasetNotFoundError):
    """A data set's file is there but cannot be read (a damaged extraction, or a web page saved by a failed
    download). The message names the file and says to extract the archive again."""


# --------------------------------------------------------------------------
# The data set container
# --------------------------------------------------------------------------


# eq=False: field-wise == on tensors is ambiguous, identity is what we want.
@dataclass(eq=False)
class ImageDataset:
    """A classification data set held in memory as uint8 tensors.

    Attributes:
        name: the data set's name (one of :data:`DATASETS` for loaded ones).
        train_images: uint8, ``(N, C, H, W)``, contiguous.
        train_labels: int64, ``(N,)``.
        test_images: uint8, ``(M, C, H, W)``.
        test_labels: int64, ``(M,)``.
        class_names: one name per class; label ``k`` is ``class_names[k]``.
        mean: per-channel mean of the training images on the [0, 1] scale.
        std: per-channel (population) std of the training images, same scale.
    """

    name: str
    train_images: torch.Tensor
    train_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    class_names: List[str]
    mean: Tuple[float, ...]
    std: Tuple[float, ...]

    def __post_init__(self) -> None:
        # Catch a malformed loader early, not as a shape error deep in training.
        for split, images, labels in (
            ("train", self.train_images, self.train_labels),
            ("test", self.test_images, self.test_labels),
        ):
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(
                    f"{self.name}: {split}_images must be uint8 (N, C, H, W); "
                    f"got {images.dtype} with shape {tuple(images.shape)}"
                )
            if labels.dtype != torch.int64 or labels.shape != (images.shape[0],):
                raise ValueError(
                    f"{self.name}: {split}_labels must be int64 of shape "
                    f"({images.shape[0]},); got {labels.dtype} {tuple(labels.shape)}"
                )
        if self.train_images.shape[1:] != self.test_images.shape[1:]:
            raise ValueError(
                f"{self.name}: train and test images differ in shape: "
                f"{tuple(self.train_images.shape[1:])} vs {tuple(self.test_images.shape[1:])}"
            )
        height, width = self.train_images.shape[2:]
        if height != width:
            raise ValueError(f"{self.name}: images must be square; got {height}x{width}")
        if len(self.mean) != self.in_channels or len(self.std) != self.in_channels:
            raise ValueError(
                f"{self.name}: mean/std need one value per channel ({self.in_channels})"
            )

    def __repr__(self) -> str:
        # The default repr would print every pixel.
        return (
            f"ImageDataset(name={self.name!r}, train={len(self.train_labels)}, "
            f"test={len(self.test_labels)}, classes={self.num_classes}, "
            f"input_shape={self.input_shape})"
        )

    @property
    def num_classes(self) -> int:
        """Number of classes (the length of :attr:`class_names`)."""
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        """Number of image channels (1 for digits, 3 otherwise)."""
        return int(self.train_images.shape[1])

    @property
    def image_size(self) -> int:
        """Height (= width) of the square images in pixels."""
        return int(self.train_images.shape[2])

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one image."""
        channels, height, width = self.train_images.shape[1:]
        return int(channels), int(height), int(width)

    def subset(
        self, train: Optional[int] = None, test: Optional[int] = None, seed: int = 0
    ) -> "ImageDataset":
        """A class-stratified random subset, deterministic from ``seed``.

        Used by the smoke profile to run the real pipeline on tiny slices.
        Every class present in a split keeps at least one image whenever the
        requested size allows it. ``None`` (or a size at least as large as the
        split) keeps the whole split. The images keep their original order.

        The subset keeps the parent's ``name``, class names and normalisation
        statistics: it is a cheaper version of the same experiment, so it is
        normalised exactly as the full data set would be.
        """
        # Separate streams, so the test selection does not depend on the train size.
        train_idx = _subset_indices(self.train_labels, train, seed, stream=0, split="train")
        test_idx = _subset_indices(self.test_labels, test, seed, stream=1, split="test")
        return ImageDataset(
            name=self.name,
            train_images=_take(self.train_images, train_idx),
            train_labels=_take(self.train_labels, train_idx),
            test_images=_take(self.test_images, test_idx),
            test_labels=_take(self.test_labels, test_idx),
            class_names=list(self.class_names),
            mean=tuple(self.mean),
            std=tuple(self.std),
        )

    def split_validation(self, fraction: float, seed: int) -> Tuple[TensorPair, TensorPair]:
        """Hold out a stratified ``fraction`` of the training split for validation.

        This is how the tuned baseline chooses tau without touching the test
        set. Deterministic from ``seed``; both parts keep the original order,
        and every class keeps at least one training image.

        Returns:
            ``((train_x, train_y), (val_x, val_y))``; with ``fraction == 0``
            the validation tensors are empty (zero rows, same trailing shape).
        """
        if not 0.0 <= fraction < 1.0:
            raise ValueError(f"fraction must be in [0, 1); got {fraction}")
        labels = self.train_labels
        n_val = int(round(fraction * len(labels)))
        rng = np.random.default_rng([seed, 2])
        counts = _class_counts(labels)
        # A class with a single image stays in training: the student must see it.
        capacity = np.maximum(counts - 1, 0)
        if n_val > capacity.sum():
            raise ValueError(
                f"fraction={fraction} asks for {n_val} validation images but only "
                f"{int(capacity.sum())} can be held out while keeping one training "
                "image per class"
            )
        val_idx = _stratified_pick(labels, _allocate(capacity, n_val, rng), rng)
        keep = torch.ones(len(labels), dtype=torch.bool)
        keep[val_idx] = False
        train_idx = torch.nonzero(keep).flatten()
        logger.debug("%s: %d train / %d validation images", self.name, len(train_idx), n_val)
        return (
            (_take(self.train_images, train_idx), _take(labels, train_idx)),
            (_take(self.train_images, val_idx), _take(labels, val_idx)),
        )


# --------------------------------------------------------------------------
# Stratified sampling
# --------------------------------------------------------------------------


def _class_counts(labels: torch.Tensor) -> np.ndarray:
    """Images per class, indexed by label (classes up to the largest label)."""
    if len(labels) == 0:
        return np.zeros(0, dtype=np.int64)
    return np.bincount(labels.numpy())


def _allocate(capacity: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Split ``n`` picks over classes: one each first, the rest proportionally.

    ``capacity[k]`` is how many images class ``k`` can give. Proportional
    shares are floored and the leftovers go to the largest remainders (the
    largest-remainder method), which never exceeds a class's capacity.
    """
    present = np.flatnonzero(capacity > 0)
    alloc = np.zeros_like(capacity)
    if n <= 0:
        return alloc
    if n < len(present):
        # Too few picks for one per class: a random selection of classes.
        logger.warning(
            "asked for %d images from %d classes: not every class can be present", n, len(present)
        )
        alloc[rng.choice(present, size=n, replace=False)] = 1
        return alloc
    alloc[present] = 1
    rest = capacity - alloc
    remaining = n - len(present)
    if remaining == 0:
        return alloc
    share = remaining * rest / rest.sum()
    floor = np.floor(share).astype(np.int64)
    leftover = remaining - int(floor.sum())
    # Ties broken at random, so no class is systematically favoured.
    order = np.lexsort((rng.random(len(share)), -(share - floor)))
    floor[order[:leftover]] += 1
    return alloc + floor


def _stratified_pick(labels: torch.Tensor, per_class: np.ndarray, rng: np.random.Generator) -> torch.Tensor:
    """Random indices, ``per_class[k]`` of them with label ``k``, in ascending order."""
    labels_np = labels.numpy()
    chosen = []
    for k, count in enumerate(per_class):
        if count:
            members = np.flatnonzero(labels_np == k)
            chosen.append(rng.choice(members, size=int(count), replace=False))
    if not chosen:
        return torch.zeros(0, dtype=torch.int64)
    return torch.from_numpy(np.sort(np.concatenate(chosen)).astype(np.int64))


def _subset_indices(
    labels: torch.Tensor, size: Optional[int], seed: int, stream: int, split: str
) -> Optional[torch.Tensor]:
    """Indices of a stratified subset of ``size`` images, or None to keep all."""
    if size is None:
        return None
    if size < 0:
        raise ValueError(f"{split} subset size must be >= 0 or None; got {size}")
    if size >= len(labels):
        logger.info("%s subset of %d >= %d images: keeping the whole split", split, size, len(labels))
        return None
    rng = np.random.default_rng([seed, stream])
    return _stratified_pick(labels, _allocate(_class_counts(labels), size, rng), rng)


def _take(tensor: torch.Tensor, indices: Optional[torch.Tensor]) -> torch.Tensor:
    """Rows ``indices`` of ``tensor`` as a new contiguous tensor (all rows if None)."""
    if indices is None:
        return tensor
    return tensor.index_select(0, indices).contiguous()


# --------------------------------------------------------------------------
# Shared helpers for the loaders
# --------------------------------------------------------------------------


def _channel_stats(images: np.ndarray) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Per-channel mean and population std of uint8 ``(N, C, H, W)`` images, in [0, 1]."""
    channels = images.shape[1]
    total = np.zeros(channels)
    total_sq = np.zeros(channels)
    for start in range(0, len(images), _STATS_CHUNK):
        chunk = images[start : start + _STATS_CHUNK].astype(np.float64) / 255.0
        total += chunk.sum(axis=(0, 2, 3))
        total_sq += np.square(chunk).sum(axis=(0, 2, 3))
    count = max(images.shape[0] * images.shape[2] * images.shape[3], 1)
    mean = total / count
    # Clip: rounding can push a constant channel's variance a hair below zero.
    std = np.sqrt(np.clip(total_sq / count - mean**2, 0.0, None))
    return tuple(float(m) for m in mean), tuple(float(s) for s in std)


def _make_dataset(
    name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    class_names: Sequence[str],
) -> ImageDataset:
    """Wrap numpy arrays as an :class:`ImageDataset`, computing the train statistics."""
    train_images = np.ascontiguousarray(train_images, dtype=np.uint8)
    test_images = np.ascontiguousarray(test_images, dtype=np.uint8)
    mean, std = _channel_stats(train_images)
    return ImageDataset(
        name=name,
        train_images=torch.from_numpy(train_images),
        train_labels=torch.from_numpy(np.asarray(train_labels, dtype=np.int64)),
        test_images=torch.from_numpy(test_images),
        test_labels=torch.from_numpy(np.asarray(test_labels, dtype=np.int64)),
        class_names=list(class_names),
        mean=mean,
        std=std,
    )


@dataclass(frozen=True)
class _Source:
    """Where a data set lives under the data root and where to get it."""

    folder: str
    url: str
    can_download: bool  # whether download=True can fetch it (via torchvision)


_SOURCES: Dict[str, _Source] = {
    "cifar10": _Source(
        "cifar-10-batches-py", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz", True
    ),
    "cifar100": _Source(
        "cifar-100-python", "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz", True
    ),
    "tinyimagenet": _Source(
        "tiny-imagenet-200", "http://cs231n.stanford.edu/tiny-imagenet-200.zip", False
    ),
}


def _how_to_get(name: str, root_text: str) -> str:
    """The 'what to download and where to put it' sentence shared by the errors."""
    source = _SOURCES[name]
    text = (
        f"Download {source.url} and extract it into {root_text}, "
        f"which creates {root_text}{os.sep}{source.folder}{os.sep}."
    )
    if source.can_download:
        text += f" Where the network allows, load_dataset({name!r}, root, download=True) does this for you."
    return text


def _resolve_root(name: str, root: Optional[PathLike]) -> Path:
    """The data root: the argument, else $GREENKD_DATA_ROOT, else a clear error."""
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV) or None
    if root is None:
        raise DatasetNotFoundError(
            f"{name} is read from a local data root, and none was given. Pass "
            f"root=DIR to load_dataset (or --data-root DIR to run_all.sh, or set "
            f"{DATA_ROOT_ENV}=DIR). {_how_to_get(name, 'DIR')}"
        )
    return Path(root).expanduser()


def _missing_folder_error(name: str, root: Path, folder: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} not found: expected the folder {folder}. {_how_to_get(name, str(root))}"
    )


def _incomplete_error(name: str, root: Path, missing: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} looks incomplete: {missing} is missing. Delete the partial folder "
        f"and extract the archive again. {_how_to_get(name, str(root))}"
    )


# --------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------


def _load_digits() -> ImageDataset:
    """scikit-learn's digits: 1797 8x8 images, values 0..16 scaled to 0..255.

    The split is fixed (stratified, 25% test, ``random_state=0``), so every
    profile and every seed sees the same 1347 training and 450 test images.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        images, labels, test_size=0.25, random_state=0, stratify=labels
    )
    return _make_dataset("digits", x_train, y_train, x_test, y_test, [str(d) for d in range(10)])


# --------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------


def _damaged_error(name: str, root: Path, path: Path, why: str) -> DatasetCorruptError:
    return DatasetCorruptError(
        f"{name}: {path} cannot be read: {why}. Delete the folder {path.parent} and extract the archive "
        f"again. {_how_to_get(name, str(root))}"
    )


def _why_unreadable(head: bytes, error: Exception) -> str:
    text = head.lstrip().lower()
    if not head:
        return "it is empty"
    if text.startswith((b"<!doctype", b"<html", b"<?xml", b"<head", b"<body")):
        return "it is a web page, not a CIFAR pickle (a download that failed and saved an error page)"
    return f"it is truncated or damaged ({type(error).__name__})"


def _unpickle(name: str, root: Path, path: Path, *fields: str) -> Dict[Any, Any]:
    """One CIFAR pickle file, which must be a record holding ``fields``.

    The files were written by Python 2; ``encoding="bytes"`` keeps their keys
    and strings as bytes instead of guessing a text encoding. Only unpickle
    files you downloaded yourself from the official source: pickle can run code.
    """
    if not path.is_file():
        raise _incomplete_error(name, root, path)
    head = b""
    try:
        with open(path, "rb") as handle:
            head = handle.read(64)
            handle.seek(0)
            record = pickle.load(handle, encoding="bytes")
    except Exception as error:  # pickle raises UnpicklingError, EOFError, ValueError, ... on bad bytes
        raise _damaged_error(name, root, path, _why_unreadable(head, error)) from None
    if not isinstance(record, dict):
        raise _damaged_error(name, root, path, f"it holds a {type(record).__name__}, not a CIFAR record")
    missing = [key for key in fields if key not in record and key.encode("ascii") not in record]
    if missing:
        raise _damaged_error(name, root, path, f"it has no {', '.join(missing)} entry")
    return record


def _read_batch(name: str, root: Path, path: Path, label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels of the CIFAR batch file ``path``."""
    record = _unpickle(name, root, path, "data", label_key)
    try:
        images, labels = _cifar_arrays(record, label_key)
    except (ValueError, TypeError, OverflowError) as error:
        raise _damaged_error(name, root, path, str(error)) from None
    if len(images) != len(labels):
        raise _damaged_error(name, root, path, f"it has {len(images)} images but {len(labels)} labels")
    return images, labels


def _field(record: Dict[Any, Any], key: str) -> Any:
    """``record[key]`` whether the pickle stored the key as bytes (the real files) or str."""
    for candidate in (key.encode("ascii"), key):
        if candidate in record:
            return record[candidate]
    raise KeyError(f"CIFAR record has no {key!r} entry; keys are {sorted(map(str, record))}")


def _text(value: Union[bytes, str]) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _cifar_arrays(record: Dict[Any, Any], label_key: str) -> Tuple[np.ndarray, np.ndarray]:
    """Images and labels of one CIFAR batch.

    Each row holds 3072 bytes: the 1024 red values, then green, then blue,
    each plane row-major, so a plain reshape gives ``(N, 3, 32, 32)``.
    """
    data = np.asarray(_field(record, "data"), dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ValueError(f"CIFAR data must be (N, 3072) rows; got shape {data.shape}")
    labels = np.asarray(_field(record, label_key), dtype=np.int64)
    return data.reshape(-1, 3, 32, 32), labels


def _download_cifar(name: str, root: Path) -> None:
    """Fetch a CIFAR archive with torchvision (which also checks its MD5)."""
    import torchvision.datasets

    dataset_cls = torchvision.datasets.CIFAR10 if name == "cifar10" else torchvision.datasets.CIFAR100
    logger.info("Downloading %s into %s with torchvision", name, root)
    try:
        dataset_cls(root=str(root), train=True, download=True)
    except Exception as error:  # network, disk or checksum: all end the same way
        raise DatasetNotFoundError(
            f"Could not download {name} into {root} ({error}). {_how_to_get(name, str(root))}"
        ) from error


def _cifar_folder(name: str, root: Optional[PathLike], download: bool) -> Tuple[Path, Path]:
    """The resolved data root and the extracted CIFAR folder, downloading if asked."""
    root_path = _resolve_root(name, root)
    folder = root_path / _SOURCES[name].folder
    if not folder.is_dir() and download:
        _download_cifar(name, root_path)
    if not folder.is_dir():
        raise _missing_folder_error(name, root_path, folder)
    return root_path, folder


def _load_cifar10(root: Optional[PathLike], download: bool) -> ImageDataset:
    """CIFAR-10 from ``{root}/cifar-10-batches-py/`` (50000 train, 10000 test)."""
    root_path, folder = _cifar_folder("cifar10", root, download)
    train = [_read_batch("cifar10", root_path, folder / f"data_batch_{i}", "labels") for i in range(1, 6)]
    test_images, test_labels = _read_batch("cifar10", root_path, folder / "test_batch", "labels")
    meta = _unpickle("cifar10", root_path, folder / "batches.meta", "label_names")
    names = [_text(n) for n in _field(meta, "label_names")]
    return _make_dataset(
        "cifar10",
        np.concatenate([images for images, _ in train]),
        np.concatenate([labels for _, labels in train]),
        test_images,
        test_labels,
        names,
    )


def _load_cifar100(root: Optional[PathLike], download: bool) -> ImageDataset:
    """CIFAR-100 from ``{root}/cifar-100-python/`` with the 100 fine labels."""
    root_path, folder = _cifar_folder("cifar100", root, download)
    train_images, train_labels = _read_batch("cifar100", root_path, folder / "train", "fine_labels")
    test_images, test_labels = _read_batch("cifar100", root_path, folder / "test", "fine_labels")
    meta = _unpickle("cifar100", root_path, folder / "meta", "fine_label_names")
    names = [_text(n) for n in _field(meta, "fine_label_names")]
    return _make_dataset("cifar100", train_images, train_labels, test_images, test_labels, names)


# --------------------------------------------------------------------------
# Tiny ImageNet
# --------------------------------------------------------------------------

_TINY_SIZE = 64
_TINY_CACHE = "greenkd_cache.npz"
# Bump when the cached arrays' meaning changes, so stale caches are rebuilt.
_TINY_CACHE_VERSION = 1
_JPEG_SUFFIXES = {".jpeg", ".jpg"}


def _read_wnids(name: str, root: Path, folder: Path) -> List[str]:
    """The class ids, in the order of ``wnids.txt`` (which fixes the label indices)."""
    path = folder / "wnids.txt"
    if not path.is_file():
        raise _incomplete_error(name, root, path)
    wnids = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if len(set(wnids)) != len(wnids):
        raise ValueError(f"{path} lists a class id more than once")
    return wnids


def _read_class_names(folder: Path, wnids: Sequence[str]) -> List[str]:
    """Readable class names from ``words.txt`` (first synonym), else the wnid itself."""
    path = folder / "words.txt"
    words: Dict[str, str] = {}
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            wnid, _, synonyms = line.partition("\t")
            words[wnid.strip()] = synonyms.split(",")[0].strip()
    else:
        logger.info("%s not found: class names are the wnids", path)
    return [words.get(wnid) or wnid for wnid in wnids]


def _jpegs(directory: Path) -> List[Path]:
    return sorted(p for p in directory.iterdir() if p.suffix.lower() in _JPEG_SUFFIXES)


def _tiny_train_files(name: str, root: Path, folder: Path, wnids: Sequence[str]) -> Tuple[List[Path], List[int]]:
    """Training JPEGs (sorted by file name within a class) and their labels."""
    paths: List[Path] = []
    labels: List[int] = []
    for label, wnid in enumerate(wnids):
        directory = folder / "train" / wnid / "images"
        if not directory.is_dir():
            raise _incomplete_error(name, root, directory)
        files = _jpegs(directory)
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels


def _tiny_val_files(name: str, root: Path, folder: Path, wnids: Sequence[str]) -> Tuple[List[Path], List[int]]:
    """Validation JPEGs and labels, in the order of ``val/val_annotations.txt``."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise _incomplete_error(name, root, annotations)
    index = {wnid: label for label, wnid in enumerate(wnids)}
    paths: List[Path] = []
    labels: List[int] = []
    for line_no, line in enumerate(annotations.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise ValueError(
                f"{annotations}:{line_no}: expected 'file<TAB>wnid<TAB>...' with a wnid "
                f"from wnids.txt; got {line!r}"
            )
        paths.append(folder / "val" / "images" / fields[0])
        labels.append(index[fields[1]])
    return paths, labels


def _decode_image(path: Path) -> np.ndarray:
    """One Tiny ImageNet JPEG as uint8 ``(3, 64, 64)``; grayscale files become RGB."""
    from PIL import Image

    with Image.open(path) as image:
        rgb = image.convert("RGB")
    if rgb.size != (_TINY_SIZE, _TINY_SIZE):
        raise ValueError(f"{path} is {rgb.size[0]}x{rgb.size[1]}; Tiny ImageNet images are 64x64")
    return np.asarray(rgb).transpose(2, 0, 1)


def _decode_all(paths: Sequence[Path]) -> np.ndarray:
    """Decode JPEGs straight into one preallocated array (no second 1 GB copy)."""
    out = np.empty((len(paths), 3, _TINY_SIZE, _TINY_SIZE), dtype=np.uint8)
    progress = tqdm(paths, desc="Decoding Tiny ImageNet (first load only)", unit="img")
    for i, path in enumerate(progress):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is listed but missing; re-extract Tiny ImageNet")
        out[i] = _decode_image(path)
    return out


def _save_cache(path: Path, arrays: Dict[str, np.ndarray]) -> bool:
    """Write the cache atomically; skip (with a log line) where the folder is read-only."""
    if not os.access(path.parent, os.W_OK):
        logger.info("%s is not writable: not caching decoded Tiny ImageNet", path.parent)
        return False
    handle, tmp_name = tempfile.mkstemp(prefix=".greenkd_cache.", suffix=".tmp", dir=path.parent)
    try:
        # A file object, because np.savez would append ".npz" to a bare name.
        with os.fdopen(handle, "wb") as tmp:
            np.savez(tmp, **arrays)
        # Rename last, so an interrupted write never looks like a finished cache.
        os.replace(tmp_name, path)
    except OSError as error:
        logger.info("could not write the Tiny ImageNet cache %s (%s): skipping it", path, error)
        Path(tmp_name).unlink(missing_ok=True)
        return False
    logger.info("cached decoded Tiny ImageNet in %s", path)
    return True


def _load_cache(path: Path, wnids: Sequence[str]) -> Optional[Dict[str, np.ndarray]]:
    """The cached arrays, or None when absent, unreadable or built for other classes."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (OSError, ValueError, EOFError) as error:
        logger.warning("ignoring unreadable cache %s (%s)", path, error)
        return None
    if int(arrays.get("version", -1)) != _TINY_CACHE_VERSION or list(arrays.get("wnids", [])) != list(wnids):
        logger.warning("ignoring stale cache %s (other version or classes): decoding again", path)
        return None
    logger.info("loading decoded Tiny ImageNet from %s", path)
    return arrays


def _load_tinyimagenet(root: Optional[PathLike], download: bool) -> ImageDataset:
    """Tiny ImageNet (200 classes, 64x64 RGB) from ``{root}/tiny-imagenet-200/``.

    * Labels follow the line order of ``wnids.txt`` as shipped (not sorted,
      unlike torchvision's ImageFolder), so label ``k`` is line ``k``.
    * The **test split is the official validation split** (10000 images,
      labels from ``val/val_annotations.txt``): the official test labels
      were never published. Hold-out validation comes from the train split.
    * Grayscale JPEGs are converted to RGB.
    * Decoding 110k JPEGs is slow, so the arrays are cached in
      ``tiny-imagenet-200/greenkd_cache.npz`` when the folder is writable and
      reused next time. Delete that file to force a fresh decode.
    """
    name = "tinyimagenet"
    root_path = _resolve_root(name, root)
    folder = root_path / _SOURCES[name].folder
    if not folder.is_dir():
        if download:
            raise DatasetNotFoundError(
                f"{name} cannot be downloaded automatically (the archive is large and "
                f"has no checksum we can verify). {_how_to_get(name, str(root_path))}"
            )
        raise _missing_folder_error(name, root_path, folder)
    wnids = _read_wnids(name, root_path, folder)
    class_names = _read_class_names(folder, wnids)
    cache_path = folder / _TINY_CACHE
    arrays = _load_cache(cache_path, wnids)
    if arrays is None:
        train_paths, train_labels = _tiny_train_files(name, root_path, folder, wnids)
        val_paths, val_labels = _tiny_val_files(name, root_path, folder, wnids)
        images = _decode_all(train_paths + val_paths)
        arrays = {
            "version": np.asarray(_TINY_CACHE_VERSION),
            "wnids": np.asarray(wnids, dtype=str),
            "train_images": images[: len(train_paths)],
            "train_labels": np.asarray(train_labels, dtype=np.int64),
            "test_images": images[len(train_paths) :],
            "test_labels": np.asarray(val_labels, dtype=np.int64),
        }
        _save_cache(cache_path, arrays)
    return _make_dataset(
        name,
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        class_names,
    )


# --------------------------------------------------------------------------
# Public entry point
# --------------------------------------------------------------------------

_LOADERS: Dict[str, Callable[[Optional[PathLike], bool], ImageDataset]] = {
    "digits": lambda root, download: _load_digits(),
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "tinyimagenet": _load_tinyimagenet,
}


def load_dataset(name: str, root: Optional[PathLike] = None, download: bool = False) -> ImageDataset:
    """Load one of :data:`DATASETS` into memory.

    Args:
        name: ``"digits"``, ``"cifar10"``, ``"cifar100"`` or ``"tinyimagenet"``.
        root: the data root holding the extracted archives (e.g.
            ``root/cifar-10-batches-py/``). ``None`` means the
            ``GREENKD_DATA_ROOT`` environment variable. Ignored for digits,
            which ships with scikit-learn.
        download: fetch CIFAR-10/100 with torchvision when the folder is
            missing. Tiny ImageNet must be downloaded by hand.

    Raises:
        ValueError: ``name`` is not one of :data:`DATASETS`.
        DatasetNotFoundError: the data is not under ``root``; the message says
            what to download, from where, and where to extract it.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    dataset = _LOADERS[name](root, download)
    logger.info("loaded %r", dataset)
    return dataset
