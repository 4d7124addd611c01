"""Storage: local paths and object-store URLs (s3://, gs://) through fsspec, and atomic writes.

Object stores: transient faults (HTTP 5xx, 429/SlowDown, dropped connections, timeouts) are retried a
bounded number of times, each failed attempt logged at WARNING; a permanent fault (403, a missing
bucket) is not retried. Every write failure is one ``StorageError`` naming the URL and the reason.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import fsspec

from maskgit_core.errors import StorageError

__all__ = ["url_to_fs", "join", "is_local", "put_bytes_atomic", "S3_MAX_ATTEMPTS", "s3_max_attempts"]

log = logging.getLogger(__name__)

S3_MAX_ATTEMPTS = 5
"""botocore attempts per S3 request (first try + retries, ``standard`` mode: exponential backoff with
jitter) unless ``AWS_MAX_ATTEMPTS`` says otherwise. s3fs repeats a whole call at most ``fs.retries``
(5) times on top for SlowDown and broken response bodies, so one call makes at most 5 x 5 requests."""


def s3_max_attempts() -> int:
    """Attempts per S3 request: ``AWS_MAX_ATTEMPTS`` if set, else ``S3_MAX_ATTEMPTS``."""
    value = os.environ.get("AWS_MAX_ATTEMPTS", "")
    try:
        return max(1, int(value)) if value else S3_MAX_ATTEMPTS
    except ValueError:
        raise StorageError(f"AWS_MAX_ATTEMPTS={value!r} is not an integer; unset it or give e.g. 5") from None


def _log_s3_retry(*, attempts: int, response=None, caught_exception=None, operation=None, **_: Any) -> None:
    """botocore ``needs-retry`` hook: log every failed attempt that botocore may retry."""
    if caught_exception is not None:
        reason = f"{type(caught_exception).__name__}: {caught_exception}"
    elif response is not None and (response[0].status_code >= 500 or response[0].status_code == 429):
        err = (response[1] or {}).get("Error", {})
        reason = f"HTTP {response[0].status_code} {err.get('Code', '')}".strip()
    else:
        return
    name = getattr(operation, "name", "request")
    log.warning("S3 %s attempt %d of %d failed (%s)", name, attempts, s3_max_attempts(), reason)


def url_to_fs(url: str, **storage_options: Any) -> tuple[fsspec.AbstractFileSystem, str]:
    """(filesystem, path) for a local path or an fsspec URL (s3://, gs://, ...).

    For S3-compatible servers the endpoint comes from ``AWS_ENDPOINT_URL`` (or
    ``storage_options={'client_kwargs': {'endpoint_url': ...}}``). S3 requests are retried
    ``s3_max_attempts()`` times (``config_kwargs={'retries': ...}`` overrides it).
    """
    url = os.fspath(url)
    s3 = url.startswith("s3://")
    if s3 and "client_kwargs" not in storage_options and os.environ.get("AWS_ENDPOINT_URL"):
        storage_options["client_kwargs"] = {"endpoint_url": os.environ["AWS_ENDPOINT_URL"]}
    if s3:
        retries = {"total_max_attempts": s3_max_attempts(), "mode": "standard"}  # first try included
        storage_options.setdefault("config_kwargs", {"retries": retries})
    fs, path = fsspec.core.url_to_fs(url, **storage_options)
    if s3:
        fs.connect()  # the client exists from here on (a no-op when this cached instance has one)
        fs.s3.meta.events.register("needs-retry.s3", _log_s3_retry, unique_id="maskgit-log-s3-retry")
    return fs, path.rstrip("/") if path not in ("/", "") else path


def join(root: str, rel: str) -> str:
    return f"{root.rstrip('/')}/{rel}" if root else rel


def is_local(fs: fsspec.AbstractFileSystem) -> bool:
    return "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,))


def _reason(e: BaseException) -> str:
    return getattr(e, "strerror", None) or str(e) or type(e).__name__


def put_bytes_atomic(fs: fsspec.AbstractFileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see all of it or nothing. A failed write leaves
    nothing behind (a local temp file is removed) and raises one ``StorageError`` naming the URL
    and the reason, e.g. ``No space left on device``."""
    parent = path.rsplit("/", 1)[0]
    if is_local(fs):
        tmp = f"{path}.tmp-{os.getpid()}"
        try:
            os.makedirs(parent, exist_ok=True)
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except OSError as e:
            try:
                os.remove(tmp)
            except OSError:
                pass
            raise StorageError(f"cannot write {path}: {_reason(e)} (nothing of it was kept; free space "
                               "or fix the permissions, then rerun the same command to continue)") from e
        return
    try:
        fs.pipe_file(path, data)  # one PUT: an object store object appears whole or not at all
    except Exception as e:  # s3fs raises OSError subclasses, botocore its own ClientError types
        raise StorageError(f"cannot write {fs.unstrip_protocol(path)}: {_reason(e)} (after at most "
                           f"{s3_max_attempts()} attempts per request; nothing of it was written)") from e
