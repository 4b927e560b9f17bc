"""Where the paper's data sets live under a data root, where to get them, and the errors that say so.

A data set that is not where it should be raises :class:`DatasetNotFoundError`
with a message saying what to download, from where, and where to put it; one
whose file is there but unreadable raises :class:`DatasetCorruptError`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

#: Environment variable consulted when ``load_dataset`` gets no ``root``.
DATA_ROOT_ENV = "GREENKD_DATA_ROOT"

PathLike = Union[str, "os.PathLike[str]"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where they should be.

    The message says what to download, from where, and where to put it.
    """


class DatasetCorruptError(DatasetNotFoundError):
    """A data set's file is there but cannot be read (a damaged extraction, or a web page saved by a failed
    download). The message names the file and says to extract the archive again."""


@dataclass(frozen=True)
class _Source:
    """Where a data set lives under the data root and where to get it."""

    folder: str
    url: str
    can_download: bool  # whether download=True can fetch it (via torchvision)


SOURCES: Dict[str, _Source] = {
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


def how_to_get(name: str, root_text: str) -> str:
    """The 'what to download and where to put it' sentence shared by the errors."""
    source = SOURCES[name]
    text = (
        f"Download {source.url} and extract it into {root_text}, "
        f"which creates {root_text}{os.sep}{source.folder}{os.sep}."
    )
    if source.can_download:
        text += f" Where the network allows, load_dataset({name!r}, root, download=True) does this for you."
    return text


def data_root(root: Optional[PathLike], none_given: str) -> Path:
    """The data root: the argument, else $GREENKD_DATA_ROOT; where neither is set, the error ``none_given``."""
    if root is None:
        root = os.environ.get(DATA_ROOT_ENV) or None
    if root is None:
        raise DatasetNotFoundError(none_given)
    return Path(root).expanduser()


def resolve_root(name: str, root: Optional[PathLike]) -> Path:
    """The data root of the data set ``name``, else an error that says how to give one and what to put there."""
    return data_root(root, f"{name} is read from a local data root, and none was given. Pass "
                           f"root=DIR to load_dataset (or --data-root DIR to run_all.sh, or set "
                           f"{DATA_ROOT_ENV}=DIR). {how_to_get(name, 'DIR')}")


def source_folder(name: str, root: Optional[PathLike], download: bool,
                  fetch: Optional[Callable[[str, Path], None]] = None) -> Tuple[Path, Path]:
    """The resolved data root and the data set's extracted folder under it. With ``download``, a missing folder
    is fetched by ``fetch(name, root)``; a source without one (Tiny ImageNet) cannot be downloaded."""
    root_path = resolve_root(name, root)
    folder = root_path / SOURCES[name].folder
    if not folder.is_dir() and download:
        if fetch is None:
            raise DatasetNotFoundError(
                f"{name} cannot be downloaded automatically (the archive is large and "
                f"has no checksum we can verify). {how_to_get(name, str(root_path))}"
            )
        fetch(name, root_path)
    if not folder.is_dir():
        raise missing_folder_error(name, root_path, folder)
    return root_path, folder


def missing_folder_error(name: str, root: Path, folder: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} not found: expected the folder {folder}. {how_to_get(name, str(root))}"
    )


def incomplete_error(name: str, root: Path, missing: Path) -> DatasetNotFoundError:
    return DatasetNotFoundError(
        f"{name} looks incomplete: {missing} is missing. Delete the partial folder "
        f"and extract the archive again. {how_to_get(name, str(root))}"
    )


def damaged_error(name: str, root: Path, path: Path, why: str) -> DatasetCorruptError:
    return DatasetCorruptError(
        f"{name}: {path} cannot be read: {why}. Delete the folder {path.parent} and extract the archive "
        f"again. {how_to_get(name, str(root))}"
    )

