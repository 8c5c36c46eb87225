"""Where files live: a local directory or an S3-compatible object store, named by one string.

A location is a local path (absolute once settings resolved it) or an `s3://bucket/key` URI.
pyarrow reads and writes Parquet on either through its `FileSystem`; what an object store
lacks (rename, and so atomic replacement of a directory) is worked around by the callers that
need it (shared/feature_store.py commits a version by a conditional put of its record).

The S3 connection comes from the standard AWS variables, read by pyarrow and boto3 alike, so
one set configures the feature store, batch scoring and MLflow's artifact store:
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION` and, for a store other than
AWS (MinIO, Ceph, R2, moto), `AWS_ENDPOINT_URL_S3` (docs/storage.md).
"""

from __future__ import annotations

import functools
import posixpath
from typing import Any

import pyarrow.fs as pafs

S3_SCHEME = "s3://"


def is_object_store(location: str) -> bool:
    return location.startswith(S3_SCHEME)


def join(location: str, *parts: str) -> str:
    """`location` with `parts` appended, `/`-separated on both kinds of store."""
    return posixpath.join(location, *parts)


def parent(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[0]


def name(location: str) -> str:
    return location.rstrip("/").rsplit("/", 1)[-1]


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem holding `location`, and the path it knows it by."""
    if is_object_store(location):
        return s3_filesystem(), location[len(S3_SCHEME) :]
    return local_filesystem(), location


def split_s3(location: str) -> tuple[str, str]:
    """`s3://bucket/key` → (bucket, key)."""
    bucket, _, key = location[len(S3_SCHEME) :].partition("/")
    return bucket, key


@functools.cache
def local_filesystem() -> pafs.LocalFileSystem:
    return pafs.LocalFileSystem()


@functools.cache
def s3_filesystem() -> pafs.FileSystem:
    """One per process: pyarrow's S3 client keeps its connections (from_uri reads the
    endpoint, region and credentials from the AWS variables)."""
    filesystem, _ = pafs.FileSystem.from_uri("s3://streamops")
    return filesystem


@functools.cache
def s3_client() -> Any:
    """boto3's S3 client, for what pyarrow does not offer (a conditional put). Imported here:
    only object-store users pay for it."""
    import boto3

    return boto3.client("s3")


def exists(location: str) -> bool:
    filesystem, path = resolve(location)
    return bool(filesystem.get_file_info(path).type == pafs.FileType.File)


def remove_tree(location: str) -> None:
    """Delete a directory (a key prefix on S3) and everything under it; absent is fine."""
    filesystem, path = resolve(location)
    if filesystem.get_file_info(path).type == pafs.FileType.NotFound:
        return
    filesystem.delete_dir(path)


def files_under(location: str) -> list[pafs.FileInfo]:
    """Every file below `location`, at any depth (none when it does not exist)."""
    filesystem, path = resolve(location)
    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    return [info for info in filesystem.get_file_info(selector) if info.is_file]
