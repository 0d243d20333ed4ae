"""Files on local disks or shared storage (S3, GCS, NFS, HDFS) through pyarrow filesystems.

Writes are atomic where the filesystem allows it: the bytes go to a temporary name beside the
target and are then renamed over it, so a reader (or a run killed half-way) sees the old file
or the new one, never a torn one. Object stores have no rename; there the temporary object is
moved (copied, then deleted), and readers never look at temporary names.

Files and folders get the process umask's modes (0644 and 0755 under umask 0022), as any other
program's would: temporary names are made here with the ordinary modes rather than by
``tempfile``, whose 0600/0700 would survive the rename, and a file written through
``atomic_path`` gets the ordinary mode before the rename even when its writer made it 0600
(safetensors' ``save_file`` does).
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import uuid
from pathlib import Path
from typing import Iterator

import pyarrow.fs as pafs


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (what os.umask alone allows)
    os.umask(mask)
    return mask


def set_default_mode(path: str | Path) -> None:
    """Give a file the mode a plain ``open(path, "w")`` would have: 0666 less the umask."""
    os.chmod(path, 0o666 & ~current_umask())


def temp_file(folder: str | Path, prefix: str, suffix: str = ".tmp") -> Path:
    """A new empty file with a unique name in ``folder``, mode 0666 less the umask."""
    path = Path(folder) / f"{prefix}.{uuid.uuid4().hex[:12]}{suffix}"
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    return path


def temp_dir(folder: str | Path, prefix: str) -> Path:
    """A new empty folder with a unique name in ``folder``, mode 0777 less the umask."""
    path = Path(folder) / f"{prefix}{uuid.uuid4().hex[:12]}"
    os.mkdir(path, 0o777)
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary file beside the local ``path`` to write; renamed over ``path`` when the block
    ends normally, removed when it raises."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_file(path.parent, path.name)
    try:
        yield Path(tmp)
        set_default_mode(tmp)  # the block's writer may have replaced the file with a 0600 one
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


def remove_tree(uri: str) -> None:
    """Delete a folder and everything under it (local or remote); absent is fine."""
    fs, path = resolve(uri)
    try:
        fs.delete_dir(path)
    except FileNotFoundError:
        pass


def remove_file(uri: str) -> None:
    """Delete one file (local or remote); absent is fine."""
    fs, path = resolve(uri)
    try:
        fs.delete_file(path)
    except FileNotFoundError:
        pass


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


def check_writable_folder(path: str | Path, what: str) -> None:
    """Refuse, before any work, a local output folder that cannot be created or written.

    ``what`` names the setting in the message (``output.storage``, ``--out``). The folder is
    created if it is missing and a probe file is written and removed in it; folders the check
    created are removed again. Remote URIs are left to the write itself.
    """
    from distforget.errors import ConfigError

    if is_remote(str(path)):
        return
    path = Path(os.path.abspath(path))
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{what} {str(path)!r} cannot be created: {str(existing)!r} is a "
                          "file, expected a folder")
    created = []
    try:
        for folder in reversed([path, *path.parents]):
            if not folder.exists():
                os.mkdir(folder, 0o777)
                created.append(folder)
        temp_file(path, ".distforget-write-check").unlink()
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConfigError(f"{what} {str(path)!r} cannot be created or written ({reason}): "
                          "expected a folder this user can write") from None
    finally:
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
