"""Files on local disks or shared storage (S3, GCS, NFS, HDFS) through pyarrow filesystems.

Writes are atomic where the filesystem allows it: the bytes go to a temporary name beside the
target and are then renamed over it, so a reader (or a run killed half-way) sees the old file
or the new one, never a torn one. Object stores have no rename; there the temporary object is
moved (copied, then deleted), and readers never look at temporary names.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import tempfile
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside the local ``path`` to write; renamed over ``path`` when the block
    ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def is_remote(uri: str) -> bool:
    return "://" in str(uri) and not str(uri).startswith("file://")


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and the path within it for a local path or a URI."""
    uri = str(uri)
    if "://" in uri:
        fs, path = pafs.FileSystem.from_uri(uri)
        return fs, path
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join(uri: str, *parts: str) -> str:
    uri = str(uri)
    if "://" in uri:
        return posixpath.join(uri, *parts)
    return os.path.join(uri, *parts)


def exists(uri: str) -> bool:
    fs, path = resolve(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def makedirs(uri: str) -> None:
    fs, path = resolve(uri)
    fs.create_dir(path, recursive=True)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(uri: str, data: bytes) -> None:
    """Write ``data`` to ``uri`` atomically (see the module docstring)."""
    fs, path = resolve(uri)
    parent = posixpath.dirname(path) if "://" in str(uri) else os.path.dirname(path)
    fs.create_dir(parent, recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with fs.open_output_stream(tmp) as f:
            f.write(data)
        if isinstance(fs, pafs.LocalFileSystem):
            os.replace(tmp, path)
        else:
            fs.move(tmp, path)
    except BaseException:
        try:
            fs.delete_file(tmp)
        except (OSError, FileNotFoundError):
            pass
        raise


def list_names(uri: str) -> list[str]:
    """Names directly under a folder (empty when it does not exist)."""
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(path)))
