"""CIFAR-10 for ``data.format: cifar10``, in a user's clone as in the developers' workspace
(read by ``distforget.data.load.read_cifar10``):

- ``data.path`` unset: torchvision's download into ``<cache>/cifar10`` (``DISTFORGET_CACHE``,
  see ``sources.default_cache_dir``), once; needs the network the first time.
- ``data.path`` a folder of torchvision's files: read from there (downloaded if missing).
- ``data.path`` a Parquet copy of CIFAR-10 (a ``.parquet`` file or a folder of them, such as
  ``train.parquet`` + ``test.parquet``): read as the Parquet form reads it, without the network.
  The tests and benchmarks use this with the copy in ``../shared/data/cifar10``.

The two forms hold the same images but not the same bytes (the Parquet copy is JPEG), so their
content hashes, and the caches keyed by them, differ.
"""

from __future__ import annotations

from pathlib import Path

CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship",
           "truck")


def holds_parquet(path: str | Path) -> bool:
    path = Path(path)
    return (path.is_file() and path.suffix == ".parquet") or (
        path.is_dir() and any(path.glob("*.parquet")))
