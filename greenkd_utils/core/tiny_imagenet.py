"""Tiny ImageNet, read from the Stanford CS231n folder tree under a data root.

Its ``val`` split is used as the test split: the official test labels were
never published. Decoded arrays are cached next to the images.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm.auto import tqdm

from greenkd_utils.core.dataset_sources import PathLike, incomplete_error, source_folder
from greenkd_utils.core.image_dataset import ImageDataset, dataset_from_arrays

logger = logging.getLogger(__name__)

_TINY_SIZE = 64
_TINY_CACHE = "greenkd_cache.npz"
# Bump when the cached arrays' meaning changes, so stale caches are rebuilt.
_TINY_CACHE_VERSION = 1
_JPEG_SUFFIXES = {".jpeg", ".jpg"}


def _read_wnids(name: str, root: Path, folder: Path) -> List[str]:
    """The class ids, in the order of ``wnids.txt`` (which fixes the label indices)."""
    path = folder / "wnids.txt"
    if not path.is_file():
        raise incomplete_error(name, root, path)
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
            raise incomplete_error(name, root, directory)
        files = _jpegs(directory)
        paths.extend(files)
        labels.extend([label] * len(files))
    return paths, labels


def _tiny_val_files(name: str, root: Path, folder: Path, wnids: Sequence[str]) -> Tuple[List[Path], List[int]]:
    """Validation JPEGs and labels, in the order of ``val/val_annotations.txt``."""
    annotations = folder / "val" / "val_annotations.txt"
    if not annotations.is_file():
        raise incomplete_error(name, root, annotations)
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


def load_tinyimagenet(root: Optional[PathLike], download: bool) -> ImageDataset:
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
    root_path, folder = source_folder(name, root, download)
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
    return dataset_from_arrays(
        name,
        arrays["train_images"],
        arrays["train_labels"],
        arrays["test_images"],
        arrays["test_labels"],
        class_names,
    )

