"""Content-addressed blob stores, chosen by URI scheme (file:// or s3://).

A blob's address is the sha256 of its bytes, laid out as sha256/<2 hex>/<64 hex>, so the
same bytes are stored once. Writes are verified before they count: a file is written to a
temporary name, hashed, then renamed into place; an S3 object is put with its SHA-256
checksum (the server refuses mismatching bodies) and checked with a HEAD afterwards. Reads
hash what they deliver and raise CorruptBlob on a mismatch.
"""

from __future__ import annotations

import base64
import hashlib
import io
import contextlib
import os
import secrets
import stat
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from .errors import CorruptBlob, InvalidArgument, NotFound, StorageUnavailable

_CHUNK = 1 << 20
_HEX = frozenset("0123456789abcdef")


def _check_digest(sha256: str) -> str:
    if len(sha256) != 64 or not set(sha256) <= _HEX:
        raise InvalidArgument(f"{sha256!r} is not a lowercase hex sha256 digest")
    return sha256


def blob_key(sha256: str) -> str:
    """Relative address of a blob: sha256/ab/abcdef..."""
    return f"sha256/{sha256[:2]}/{_check_digest(sha256)}"


class BlobStore(ABC):
    """Where adapter files live, addressed by their sha256."""

    uri: str

    @abstractmethod
    def put(self, src: Path, sha256: str, data: bytes | None = None) -> bool:
        """Store src under sha256 unless an intact copy exists; return True if written.

        data: src's bytes, already read (then src only names them in errors). Raises
        CorruptBlob if the bytes do not hash to sha256 (src changed since it was hashed).
        """

    @abstractmethod
    def exists(self, sha256: str) -> bool:
        """Whether a blob is stored under sha256 (its bytes are not checked)."""

    @abstractmethod
    def get(self, sha256: str, dest: Path) -> None:
        """Write the blob to dest atomically, verifying its sha256; CorruptBlob if it differs."""

    @abstractmethod
    def delete(self, sha256: str) -> None:
        """Remove a blob; missing blobs are ignored."""

    @abstractmethod
    def list(self) -> Iterator[tuple[str, float]]:
        """Yield (sha256, last-modified epoch seconds) of every stored blob."""

    @abstractmethod
    def intact(self, sha256: str) -> bool:
        """Whether the blob is stored and its bytes hash to sha256 (reads every byte)."""

    def list_temp(self) -> Iterator[tuple[str, float]]:
        """Yield (name, last-modified epoch seconds) of leftover temporary files (a writer
        killed mid-write leaves them); stores that write atomically have none."""
        return iter(())

    def delete_temp(self, name: str) -> None:
        """Remove a leftover temporary file named by list_temp."""


def _first_read(f, keep: int = 0) -> int:
    """How much the first read of binary file f asks for: what a regular file holds (one byte
    more shows a file that grew since the fstat), at least ``keep``, at most a chunk. A stream
    of unknown size (an S3 body, bytes in memory, a pipe) gets 1: a read that returns all it
    asked for is never taken for the end, so the chunked reads follow. Not a fixed 1 MiB: a
    read allocates what it asks for, so every small file of every publish cost a 1 MiB
    allocation (with the other changes of BENCHMARKS.md's "the publish path's file reads",
    1.5-2 % of a publish); fetch and export read the same way."""
    try:
        st = os.fstat(f.fileno())
    except (AttributeError, OSError, io.UnsupportedOperation):
        return 1
    if not stat.S_ISREG(st.st_mode):
        return 1
    return min(st.st_size, max(keep, _CHUNK - 1)) + 1


def hash_file(path: str | os.PathLike, keep: int = 0) -> tuple[str, int, bytes | None]:
    """Return (hex sha256, size in bytes, content) of a file, streamed; content is the
    file's bytes when it is at most ``keep`` bytes long, else None."""
    with open(path, "rb") as f:
        want = _first_read(f, keep)
        first = f.read(want)
        h = hashlib.sha256(first)
        if len(first) <= keep:
            return h.hexdigest(), len(first), first
        size = len(first)
        if size == want:  # a shorter read was the end of the file
            while chunk := f.read(_CHUNK):
                h.update(chunk)
                size += len(chunk)
    return h.hexdigest(), size, None


def _copy_hashing(f, out) -> tuple[str, int]:
    """Copy binary file (or stream) f to out; return (hex sha256, bytes copied)."""
    h = hashlib.sha256()
    n = 0
    chunk = f.read(_first_read(f))
    while chunk:
        h.update(chunk)
        out.write(chunk)
        n += len(chunk)
        chunk = f.read(_CHUNK)
    return h.hexdigest(), n


TEMP_PREFIX, TEMP_SUFFIX = ".tmp-", ".part"


def _open_temp(dest: str) -> tuple[int, str]:
    """Create a unique temp file beside dest (exclusive create), making the folder if needed.

    Named by the PID and 64 random bits (a PID alone is reused after a crash), and the folder
    is only created when the open says it is missing: on the publish hot path the folder
    almost always exists, so that costs one open() instead of a stat, a mkdir and an open.
    """
    folder = os.path.dirname(dest)
    tmp = os.path.join(folder, f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(8)}{TEMP_SUFFIX}")
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    try:
        return os.open(tmp, flags, 0o644), tmp
    except FileNotFoundError:
        os.makedirs(folder, exist_ok=True)
        return os.open(tmp, flags, 0o644), tmp


def _replace_from_temp(dest: str, fill, fsync: bool) -> None:
    """Create a temp file beside dest, let ``fill(fd)`` write it (raising abandons it), then
    rename it into place: a reader sees the whole file or none. The temp file is removed on
    any failure."""
    fd, tmp = _open_temp(dest)
    try:
        try:
            fill(fd)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _write_verified(dest: str, src, sha256: str, what: str, fsync: bool) -> None:
    """Stream binary file src into a temp file beside dest, check the hash, then rename
    into place."""
    def fill(fd: int) -> None:
        with os.fdopen(fd, "wb", closefd=False) as out:
            got, _ = _copy_hashing(src, out)
        if got != sha256:
            raise CorruptBlob(f"{what}: sha256 is {got}, expected {sha256}")

    _replace_from_temp(dest, fill, fsync)


def _write_bytes(dest: str, data: bytes, sha256: str, what: str, fsync: bool) -> None:
    """_write_verified for bytes already in memory: checked before anything is written, then
    written with os.write on the descriptor (no file object and no copy loop around it: a
    small adapter's publish writes two files, and this is on its path)."""
    got = hashlib.sha256(data).hexdigest()
    if got != sha256:
        raise CorruptBlob(f"{what}: sha256 is {got}, expected {sha256}")

    def fill(fd: int) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]

    _replace_from_temp(dest, fill, fsync)


class FileBlobStore(BlobStore):
    """Blobs under a local directory (file:///abs/path)."""

    def __init__(self, root: str | Path, *, fsync: bool = False):
        # fsync=False keeps crash safety (rename is atomic, so a blob is whole or absent) but
        # not power-loss durability; turn it on when the disk is the system of record.
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.fsync = fsync
        self.uri = self.root.resolve().as_uri()
        self._root = str(self.root)

    def path(self, sha256: str) -> Path:
        return Path(self._file(sha256))

    def _file(self, sha256: str) -> str:
        # A str, not a Path: pathlib's parsing is a visible share of a small publish.
        return os.path.join(self._root, blob_key(sha256))

    def intact(self, sha256: str) -> bool:
        return self._intact(self._file(sha256), sha256)

    def _entries(self) -> Iterator[tuple[str, str, float]]:
        """(folder, file name, mtime) of every file under sha256/<2 hex>/."""
        base = self.root / "sha256"
        if not base.is_dir():
            return
        for sub in base.iterdir():
            if not sub.is_dir():
                continue
            for f in sub.iterdir():
                try:
                    yield sub.name, f.name, f.stat().st_mtime
                except FileNotFoundError:
                    continue

    def list_temp(self) -> Iterator[tuple[str, float]]:
        for sub, name, mtime in self._entries():
            if name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX):
                yield f"{sub}/{name}", mtime

    def delete_temp(self, name: str) -> None:
        sub, _, fname = name.partition("/")
        if not (fname.startswith(TEMP_PREFIX) and fname.endswith(TEMP_SUFFIX)) or \
                "/" in fname or len(sub) != 2 or not set(sub) <= _HEX:
            raise InvalidArgument(f"{name!r} is not a temporary file of this store")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(self._root, "sha256", sub, fname))

    def _intact(self, p: str, sha256: str) -> bool:
        try:
            return hash_file(p)[0] == sha256
        except FileNotFoundError:
            return False

    def put(self, src: Path, sha256: str, data: bytes | None = None) -> bool:
        p = self._file(sha256)
        if self._intact(p, sha256):
            return False
        # Absent, or present but damaged: (re)write it from the good source.
        if data is not None:
            _write_bytes(p, data, sha256, f"source file {src}", self.fsync)
        else:
            with open(src, "rb") as f:
                _write_verified(p, f, sha256, f"source file {src}", self.fsync)
        return True

    def exists(self, sha256: str) -> bool:
        return os.path.isfile(self._file(sha256))

    def get(self, sha256: str, dest: Path) -> None:
        p = self._file(sha256)
        try:
            f = open(p, "rb")
        except FileNotFoundError:
            raise NotFound(f"blob {sha256} is missing from {self.uri}") from None
        with f:
            _write_verified(os.fspath(dest), f, sha256,
                            f"stored blob {p} is corrupt (run publish again to repair it)",
                            False)

    def delete(self, sha256: str) -> None:
        try:
            os.unlink(self._file(sha256))
        except FileNotFoundError:
            pass

    def list(self) -> Iterator[tuple[str, float]]:
        for _sub, name, mtime in self._entries():
            if len(name) == 64 and set(name) <= _HEX:
                yield name, mtime


_S3_ANSWERS = frozenset({"404", "NoSuchKey", "NotFound", "BadDigest", "InvalidDigest"})


def _s3_timeouts() -> dict[str, float]:
    """Connect and read timeouts in seconds: PEFTOPS_S3_CONNECT_TIMEOUT (default 5) and
    PEFTOPS_S3_READ_TIMEOUT (default 30), read when a store is opened."""
    out = {}
    for key, env, default in (("connect", "PEFTOPS_S3_CONNECT_TIMEOUT", 5.0),
                              ("read", "PEFTOPS_S3_READ_TIMEOUT", 30.0)):
        raw = os.environ.get(env)
        try:
            out[key] = float(raw) if raw else default
        except ValueError:
            raise InvalidArgument(f"{env}={raw!r} must be a number of seconds") from None
    return out


class S3BlobStore(BlobStore):
    """Blobs in an S3 bucket (s3://bucket/prefix) through boto3.

    The endpoint comes from the argument, else PEFTOPS_S3_ENDPOINT_URL, else AWS_ENDPOINT_URL
    (boto3 reads that one itself), so S3-compatible servers work. Every call has connect
    and read timeouts and a bounded number of retries; an endpoint that is down or does not
    answer raises StorageUnavailable naming it.
    """

    def __init__(self, bucket: str, prefix: str = "", *, endpoint_url: str | None = None,
                 client=None, connect_timeout: float | None = None,
                 read_timeout: float | None = None, max_attempts: int = 3):
        import boto3  # imported here: file-only users never pay for it
        from botocore.config import Config

        if len(bucket) < 3:
            raise InvalidArgument(f"S3 bucket name {bucket!r} is too short (3+ characters)")
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        endpoint_url = endpoint_url or os.environ.get("PEFTOPS_S3_ENDPOINT_URL") or None
        t = _s3_timeouts()
        config = Config(connect_timeout=connect_timeout or t["connect"],
                        read_timeout=read_timeout or t["read"],
                        retries={"max_attempts": max_attempts, "mode": "standard"})
        self.client = client or boto3.client("s3", endpoint_url=endpoint_url, config=config)
        self.endpoint = endpoint_url or getattr(getattr(self.client, "meta", None),
                                                "endpoint_url", "S3")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")

    @contextlib.contextmanager
    def _calls(self, what: str):
        """Network failures as StorageUnavailable (one line, the endpoint named)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as e:
            code = str(e.response.get("Error", {}).get("Code", ""))
            if code in _S3_ANSWERS or "checksum" in str(e).lower():
                raise  # an answer the caller handles (missing object, bad digest)
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} ({self.uri}) refused to "
                                     f"{what}: {code or e}") from None
        except BotoCoreError as e:
            raise StorageUnavailable(f"S3 endpoint {self.endpoint} ({self.uri}) failed to "
                                     f"{what}: {e}") from None

    def key(self, sha256: str) -> str:
        k = blob_key(sha256)
        return f"{self.prefix}/{k}" if self.prefix else k

    def _head(self, sha256: str) -> dict | None:
        from botocore.exceptions import ClientError

        try:
            with self._calls("answer a HEAD"):
                return self.client.head_object(Bucket=self.bucket, Key=self.key(sha256),
                                               ChecksumMode="ENABLED")
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise

    @staticmethod
    def _b64(sha256: str) -> str:
        return base64.b64encode(bytes.fromhex(sha256)).decode()

    def _head_ok(self, head: dict | None, sha256: str, size: int) -> bool:
        """An object of the right size whose checksum the server computed and matches; one
        without a server checksum is hashed in full (an unverified object is not intact)."""
        if head is None or head.get("ContentLength") != size:
            return False
        if "ChecksumSHA256" in head:
            return head["ChecksumSHA256"] == self._b64(sha256)
        return self.intact(sha256)

    def intact(self, sha256: str) -> bool:
        from botocore.exceptions import ClientError

        h = hashlib.sha256()
        try:
            with self._calls("send an object"):
                body = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))["Body"]
                while chunk := body.read(_CHUNK):
                    h.update(chunk)
        except ClientError:
            return False
        return h.hexdigest() == sha256

    def put(self, src: Path, sha256: str, data: bytes | None = None) -> bool:
        src = Path(src)
        size = len(data) if data is not None else src.stat().st_size
        if self._head_ok(self._head(sha256), sha256, size):
            return False
        from botocore.exceptions import ClientError

        # Hash the exact bytes that are sent: copy through a spool (memory up to 64 MB),
        # so a source that changes after it was hashed cannot slip through.
        with (io.BytesIO(data) if data is not None else src.open("rb")) as f, \
                tempfile.SpooledTemporaryFile(64 << 20) as spool:
            got, size = _copy_hashing(f, spool)
            if got != sha256:
                raise CorruptBlob(f"source file {src}: sha256 is {got}, expected {sha256}")
            spool.seek(0)
            try:
                # Servers that check SHA-256 checksums also refuse a body damaged in transit.
                with self._calls("store an object"):
                    self.client.put_object(Bucket=self.bucket, Key=self.key(sha256),
                                           Body=spool, ChecksumSHA256=self._b64(sha256),
                                           Metadata={"sha256": sha256})
            except ClientError as e:
                if "BadDigest" in str(e) or "checksum" in str(e).lower():
                    raise CorruptBlob(f"upload of {src} did not verify: {e}") from e
                raise
        if not self._head_ok(self._head(sha256), sha256, size):
            raise CorruptBlob(f"S3 object for {sha256} did not verify after upload")
        return True

    def exists(self, sha256: str) -> bool:
        return self._head(sha256) is not None

    def get(self, sha256: str, dest: Path) -> None:
        from botocore.exceptions import ClientError

        try:
            with self._calls("send an object"):
                obj = self.client.get_object(Bucket=self.bucket, Key=self.key(sha256))
                _write_verified(os.fspath(dest), obj["Body"], sha256,
                                f"S3 object {self.key(sha256)} is corrupt (run publish again "
                                "to repair it)", False)
        except ClientError as e:
            if e.response.get("Error", {}).get("Code") in ("404", "NoSuchKey"):
                raise NotFound(f"blob {sha256} is missing from {self.uri}") from None
            raise

    def delete(self, sha256: str) -> None:
        with self._calls("delete an object"):
            self.client.delete_object(Bucket=self.bucket, Key=self.key(sha256))

    def list(self) -> Iterator[tuple[str, float]]:
        with self._calls("list objects"):
            pages = self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=(self.prefix + "/" if self.prefix else "") + "sha256/")
            for page in pages:
                for obj in page.get("Contents", []):
                    name = obj["Key"].rsplit("/", 1)[-1]
                    if len(name) == 64 and set(name) <= _HEX:
                        yield name, obj["LastModified"].timestamp()


def _file_store(parsed, **kw) -> BlobStore:
    if parsed.netloc not in ("", "localhost"):
        raise InvalidArgument(f"file URI must be local (file:///path), got host {parsed.netloc!r}")
    return FileBlobStore(unquote(parsed.path), **kw)


def _s3_store(parsed, **kw) -> BlobStore:
    return S3BlobStore(parsed.netloc, unquote(parsed.path), **kw)


# Scheme -> factory, in the manner of an artifact-repository registry: new backends plug in
# here without touching the registry itself. Process-wide: an entry added is seen by every
# registry opened afterwards in this process.
BLOB_STORES = {"file": _file_store, "s3": _s3_store}


def open_blob_store(uri: str, **kwargs) -> BlobStore:
    """Open the blob store for a URI: file:///abs/dir (or a bare path) or s3://bucket/prefix."""
    parsed = urlparse(uri)
    if parsed.scheme in ("",) or (len(parsed.scheme) == 1 and os.name == "nt"):
        return FileBlobStore(uri, **kwargs)
    factory = BLOB_STORES.get(parsed.scheme)
    if factory is None:
        raise InvalidArgument(f"unsupported blob URI scheme {parsed.scheme!r} in {uri!r}; "
                              f"use one of {sorted(BLOB_STORES)}")
    return factory(parsed, **kwargs)
