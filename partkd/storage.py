"""Where partkd reads and writes: a local folder or an object store (``s3://bucket/prefix``), one interface over
pyarrow's filesystems (DESIGN §12).

A *location* is a string: a local path or a URI. The object store's endpoint and credentials come from the standard
AWS environment variables (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, ``AWS_PROFILE``, a
web identity), which pyarrow reads. Code that needs a real file (``torch.load``, an image writer, MLflow's artifact
upload) works in a local folder: :func:`local_copy` brings a location here, :func:`staged` sends one there.
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import os
import posixpath
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs

# Where the AWS SDK finds credentials without asking an instance metadata service: named in errors when none is set.
_CREDENTIAL_VARIABLES = ("AWS_ACCESS_KEY_ID", "AWS_PROFILE", "AWS_WEB_IDENTITY_TOKEN_FILE",
                         "AWS_CONTAINER_CREDENTIALS_FULL_URI", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")


class StorageError(OSError):
    """A location that cannot be used; the message names it and what is wrong."""


def is_remote(location: str | os.PathLike) -> bool:
    return "://" in str(location) and not str(location).startswith("file://")


def absolute(location: str | os.PathLike) -> str:
    """A URI as it is, a local path (or ``file://`` URI) made an absolute path (workers run in other directories);
    empty stays empty."""
    if not location:
        return str(location or "")
    if is_remote(location):
        return str(location).rstrip("/")
    return str(Path(str(location).removeprefix("file://")).resolve())


def join(location: str | os.PathLike, *parts: str) -> str:
    if is_remote(location):
        return posixpath.join(str(location).rstrip("/"), *parts)
    return os.path.join(location, *parts)


def name(location: str | os.PathLike) -> str:
    return posixpath.basename(str(location).rstrip("/"))


def resolve(location: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """The filesystem of ``location`` and the path in it."""
    if not is_remote(location):
        return pafs.LocalFileSystem(), str(Path(str(location).removeprefix("file://")).resolve())
    try:
        return pafs.FileSystem.from_uri(str(location))
    except (pa.ArrowException, OSError) as err:
        raise StorageError(f"{location}: {err}") from None


def _info(location) -> pafs.FileInfo:
    fs, path = resolve(location)
    try:
        return fs.get_file_info(path)
    except OSError as err:
        raise StorageError(f"{location}: {err}") from None


def exists(location) -> bool:
    return _info(location).type != pafs.FileType.NotFound


def is_file(location) -> bool:
    return _info(location).type == pafs.FileType.File


def is_dir(location) -> bool:
    return _info(location).type == pafs.FileType.Directory


def listdir(location, pattern: str = "*") -> list[str]:
    """The locations directly inside folder ``location`` whose names match ``pattern``, sorted; none if it is absent."""
    fs, path = resolve(location)
    entries = fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))
    return sorted(join(location, e.base_name) for e in entries if fnmatch.fnmatch(e.base_name, pattern))


def read_bytes(location) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def sha256(location, chunk: int = 1 << 22) -> str:
    """SHA-256 of file ``location``, read as a stream (a large shard is never held whole)."""
    digest = hashlib.sha256()
    fs, path = resolve(location)
    with fs.open_input_stream(path) as stream:
        while block := stream.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stamp(location) -> tuple[int, int] | None:
    """``(size, mtime in ns)`` of file ``location`` (what changes when it is rewritten), None where it is absent."""
    info = _info(location)
    return None if info.type == pafs.FileType.NotFound else (info.size, info.mtime_ns or 0)


def read_text(location) -> str:
    return read_bytes(location).decode()


def write_bytes(location, data: bytes) -> None:
    """Write a file whole: locally into a sibling that is then renamed; an object store writes an object whole."""
    if not is_remote(location):
        file = Path(location)
        file.parent.mkdir(parents=True, exist_ok=True)
        partial = file.with_name(f".{file.name}.partial")
        partial.write_bytes(data)
        os.replace(partial, file)
        return
    fs, path = resolve(location)
    with fs.open_output_stream(path) as stream:
        stream.write(data)


def write_text(location, text: str) -> None:
    write_bytes(location, text.encode())


def remove(location) -> None:
    """Delete folder or file ``location`` if it is there."""
    info = _info(location)
    fs, path = resolve(location)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def copy_tree(source, target) -> None:
    """Replace folder ``target`` by a copy of folder ``source``, across filesystems."""
    remove(target)
    source_fs, source_path = resolve(source)
    target_fs, target_path = resolve(target)
    target_fs.create_dir(target_path, recursive=True)
    pafs.copy_files(source_path, target_path, source_filesystem=source_fs, destination_filesystem=target_fs)


@contextlib.contextmanager
def local_copy(location) -> Iterator[Path]:
    """A local folder or file with what ``location`` holds: itself when local, else a temporary download."""
    if not is_remote(location):
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="partkd-") as tmp:
        copy = Path(tmp) / name(location)
        fs, path = resolve(location)
        if is_dir(location):
            copy.mkdir()
            pafs.copy_files(path, str(copy), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
        else:
            copy.write_bytes(read_bytes(location))
        yield copy


@contextlib.contextmanager
def staged(location) -> Iterator[Path]:
    """A local folder to write folder ``location``'s files into: itself when local (created), else a temporary folder
    whose files are uploaded when the block ends without error (files already there are kept)."""
    if not is_remote(location):
        Path(location).mkdir(parents=True, exist_ok=True)
        yield Path(location)
        return
    with tempfile.TemporaryDirectory(prefix="partkd-") as tmp:
        yield Path(tmp)
        fs, path = resolve(location)
        fs.create_dir(path, recursive=True)
        pafs.copy_files(tmp, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def check_reachable(location, what: str) -> None:
    """Fail before any work when object-store location ``location`` (setting ``what``) cannot be used: its bucket
    missing or unreachable, naming the bucket (and, where no credentials are in the environment or ``~/.aws``, saying
    so); a local location always passes. Credentials pyarrow finds elsewhere (an instance profile) are used."""
    if not is_remote(location):
        return
    scheme, _, rest = str(location).partition("://")
    bucket = rest.split("/", 1)[0]
    aws = Path.home() / ".aws"
    hint = "" if scheme != "s3" or any(os.environ.get(v) for v in _CREDENTIAL_VARIABLES) or (
        aws / "credentials").exists() or (aws / "config").exists() else (
        "; no credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE or a web identity")
    endpoint = f" at {os.environ['AWS_ENDPOINT_URL']}" if scheme == "s3" and os.environ.get("AWS_ENDPOINT_URL") else ""
    fs, _ = resolve(location)
    try:
        found = fs.get_file_info(bucket)
    except OSError as err:
        raise StorageError(f"{what} = {location}: bucket {bucket!r} cannot be reached{endpoint} "
                           f"({first_line(err)}){hint}") from None
    if found.type == pafs.FileType.NotFound:
        raise StorageError(f"{what} = {location}: bucket {bucket!r} does not exist{endpoint}{hint}")


def first_line(err: BaseException) -> str:
    """An error's first line (its type where it says nothing), for one-line messages."""
    return str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__

