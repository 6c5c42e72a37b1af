"""A repository in an S3 bucket (AWS S3 or an S3-compatible service).

Layout: object ``name`` is the key ``<prefix><name>``; the prefix (possibly
empty) ends with ``/``. Nothing else is stored: no sidecar or metadata object.

Write-once objects use a conditional create: ``PutObject`` (or
``CompleteMultipartUpload`` above the multipart threshold) with
``If-None-Match: *``; S3 answers 412 if the key exists, which becomes
:class:`ObjectExistsError`. This is what makes two hosts publishing the same
manifest name safe: exactly one wins.

Retries happen in one place, :meth:`S3Store._call`, not in botocore (whose own
retry is set to a single attempt): one bounded loop, so attempts never
multiply between two layers, and so we know when an earlier attempt's outcome
is unknown. Retried: HTTP 500/502/503/504, ``SlowDown`` and other throttling
codes, 409 ``ConditionalRequestConflict``, timeouts and connection errors, each
after ``backoff_base * 2**n`` seconds (capped) with full jitter.

A PUT whose answer was lost (the object was stored, the response never came
back) is retried; with ``If-None-Match`` the retry gets 412. Only when an
earlier attempt's outcome is unknown, a 412 is settled by comparing the stored
object with the bytes we sent (ETag = MD5 for single-part uploads, else a full
read): equal means our own write landed, so the put succeeds.

A failed multipart upload is aborted before the error propagates, so no
invisible parts are left accruing storage. One case escapes this: a
``CreateMultipartUpload`` whose answer is lost leaves an upload we never learn
the id of. :meth:`S3Store.abort_incomplete_uploads` removes such leftovers, but
also other writers' uploads in progress, so call it only under the
repository's exclusive lock (or rely on a bucket lifecycle rule).

``get`` and ``get_range`` return the stored bytes unverified: objects are
verified a layer up, by decrypting them and recomputing their id (the
repository knows what each name must contain; the store does not).
"""

from __future__ import annotations

import functools
import hashlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.config
import botocore.exceptions

from vaultstore.errors import ObjectExistsError, ObjectMissingError, StoreError
from vaultstore.store.local import check_name
from vaultstore.store.open import StoreOptions

log = logging.getLogger(__name__)

_RETRY_STATUS = {500, 502, 503, 504}
_RETRY_CODES = {
    "SlowDown",
    "InternalError",
    "ServiceUnavailable",
    "RequestTimeout",
    "Throttling",
    "ThrottlingException",
    "RequestLimitExceeded",
    "ConditionalRequestConflict",
}
_MISSING_CODES = {"NoSuchKey", "404", "NotFound"}
_EXISTS_CODES = {"PreconditionFailed", "412"}
_RETRY_EXCEPTIONS = (
    botocore.exceptions.ConnectionError,
    botocore.exceptions.HTTPClientError,
    botocore.exceptions.ResponseStreamingError,
    botocore.exceptions.IncompleteReadError,
    ConnectionError,
    TimeoutError,
)


def make_client(options: StoreOptions) -> Any:
    """A boto3 S3 client configured from ``options`` (one attempt per call)."""
    config = botocore.config.Config(
        region_name=options.region,
        connect_timeout=options.connect_timeout,
        read_timeout=options.read_timeout,
        retries={"total_max_attempts": 1, "mode": "standard"},
        request_checksum_calculation=options.checksum,
        response_checksum_validation=options.checksum,
        s3={"addressing_style": options.addressing_style},
    )
    return _session().client("s3", endpoint_url=options.endpoint_url, config=config)


@functools.cache
def _session() -> Any:
    # One session per process: loading botocore's service model is the slow
    # part of creating a client, and a session caches it.
    return boto3.session.Session()


def _error_code(exc: botocore.exceptions.ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _status(exc: botocore.exceptions.ClientError) -> int:
    meta = exc.response.get("ResponseMetadata", {})
    return int(meta.get("HTTPStatusCode", 0) or 0)


def _is_retryable(exc: BaseException) -> bool:
    if isinstance(exc, botocore.exceptions.ClientError):
        return _status(exc) in _RETRY_STATUS or _error_code(exc) in _RETRY_CODES
    return isinstance(exc, _RETRY_EXCEPTIONS)


def _is_missing(exc: BaseException) -> bool:
    if not isinstance(exc, botocore.exceptions.ClientError):
        return False
    code = _error_code(exc)
    return code in _MISSING_CODES or (_status(exc) == 404 and code != "NoSuchBucket")


def _is_exists(exc: BaseException) -> bool:
    return isinstance(exc, botocore.exceptions.ClientError) and (
        _error_code(exc) in _EXISTS_CODES or _status(exc) == 412
    )


def multipart_etag(data: bytes, part_size: int) -> str:
    """The ETag S3 gives an unencrypted multipart upload cut into ``part_size``."""
    digests = b"".join(
        hashlib.md5(data[i : i + part_size], usedforsecurity=False).digest()
        for i in range(0, len(data), part_size)
    )
    count = (len(data) + part_size - 1) // part_size
    return f"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{count}"


class _Attempts:
    """Bookkeeping for one retried operation: whether an outcome is unknown."""

    def __init__(self) -> None:
        self.uncertain = False


class S3Store:
    """Objects as keys under ``prefix`` in one S3 bucket."""

    list_page_size = 1000

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        options: StoreOptions | None = None,
        *,
        client: Any = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.options = options or StoreOptions()
        self.client = client if client is not None else make_client(self.options)
        self.url = f"s3://{bucket}/{self.prefix}"
        self._sleep = sleep
        self._rng = random.Random()

    def __repr__(self) -> str:
        return f"S3Store({self.url!r})"

    def _key(self, name: str) -> str:
        check_name(name)
        return self.prefix + name

    # -- the one retry loop -------------------------------------------------

    def _call(
        self, op: str, name: str, fn: Callable[[], Any], attempts: _Attempts
    ) -> Any:
        """Run ``fn`` with bounded, jittered retries on transient failures.

        Non-transient botocore errors propagate unchanged for the caller to
        translate; a transient failure on the last attempt becomes StoreError.
        """
        for attempt in range(1, self.options.max_attempts + 1):
            try:
                return fn()
            except Exception as exc:
                if not _is_retryable(exc):
                    raise
                # The request may have reached S3 and taken effect.
                attempts.uncertain = True
                if attempt == self.options.max_attempts:
                    raise StoreError(
                        f"S3 {op} of {name} in {self.url} failed after "
                        f"{attempt} attempts: {_describe(exc)}",
                        name=name,
                        op=op,
                        attempts=attempt,
                    ) from exc
                delay = self._backoff(attempt)
                log.warning(
                    "S3 %s of %s failed (%s); retry %d of %d in %.2fs",
                    op,
                    name,
                    _describe(exc),
                    attempt,
                    self.options.max_attempts - 1,
                    delay,
                    extra={"event": "store.s3.retry", "op": op, "object": name},
                )
                self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _backoff(self, attempt: int) -> float:
        ceiling = self.options.backoff_base * (2 ** (attempt - 1))
        return self._rng.uniform(0, min(self.options.backoff_cap, ceiling))

    def _translate(self, op: str, name: str, exc: Exception) -> StoreError:
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, botocore.exceptions.ClientError):
            if _error_code(exc) == "NoSuchBucket":
                return StoreError(
                    f"S3 bucket {self.bucket} does not exist", bucket=self.bucket
                )
        if _is_missing(exc):
            return ObjectMissingError(f"object {name} is missing", name=name)
        if isinstance(exc, botocore.exceptions.ClientError):
            code = _error_code(exc)
            return StoreError(
                f"S3 {op} of {name} in {self.url} refused: {_describe(exc)}",
                name=name,
                op=op,
                code=code,
            )
        if isinstance(exc, botocore.exceptions.NoCredentialsError):
            return StoreError(f"no S3 credentials found for {self.url}")
        return StoreError(
            f"S3 {op} of {name} in {self.url} failed: {_describe(exc)}",
            name=name,
            op=op,
        )

    # -- writing -----------------------------------------------------------

    def put(self, name: str, data: bytes, *, overwrite: bool = False) -> None:
        """Upload ``data`` under ``name``; conditional create unless overwrite.

        Raises:
            ObjectExistsError: ``name`` exists and ``overwrite`` is false.
            StoreError: S3 failed after bounded retries; nothing is visible
                (a multipart upload is aborted first).
        """
        key = self._key(name)
        attempts = _Attempts()
        try:
            if len(data) >= self.options.multipart_threshold:
                self._put_multipart(key, name, data, overwrite, attempts)
            else:
                self._put_single(key, name, data, overwrite, attempts)
        except ObjectExistsError:
            raise
        except Exception as exc:
            if not overwrite and _is_exists(exc):
                self._settle_conflict(name, data, attempts)
                return
            raise self._translate("put", name, exc) from exc

    def _put_single(
        self, key: str, name: str, data: bytes, overwrite: bool, attempts: _Attempts
    ) -> None:
        extra = {} if overwrite else {"IfNoneMatch": "*"}
        self._call(
            "put",
            name,
            lambda: self.client.put_object(
                Bucket=self.bucket, Key=key, Body=data, **extra
            ),
            attempts,
        )

    def _put_multipart(
        self, key: str, name: str, data: bytes, overwrite: bool, attempts: _Attempts
    ) -> None:
        if not overwrite and self.exists(name):
            raise ObjectExistsError(f"object {name} already exists", name=name)
        created = self._call(
            "create-multipart",
            name,
            lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key),
            _Attempts(),
        )
        upload_id = created["UploadId"]
        try:
            parts = self._upload_parts(key, name, data, upload_id)
            extra = {} if overwrite else {"IfNoneMatch": "*"}
            self._call(
                "complete-multipart",
                name,
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **extra,
                ),
                attempts,
            )
        except BaseException as exc:
            # A completion whose answer was lost may have landed: a retry then
            # meets 412 (or NoSuchUpload); our own bytes mean success.
            conflict = _is_exists(exc) or _is_no_upload(exc)
            if attempts.uncertain and conflict and self._landed(name, data):
                return
            self._abort(key, name, upload_id)
            raise

    def _upload_parts(
        self, key: str, name: str, data: bytes, upload_id: str
    ) -> list[dict[str, Any]]:
        parts: list[dict[str, Any]] = []
        size = self.options.part_size
        for number, start in enumerate(range(0, len(data), size), start=1):
            chunk = data[start : start + size]
            answer = self._call(
                f"upload-part {number}",
                name,
                functools.partial(
                    self.client.upload_part,
                    Bucket=self.bucket,
                    Key=key,
                    UploadId=upload_id,
                    PartNumber=number,
                    Body=chunk,
                ),
                _Attempts(),
            )
            part = {"PartNumber": number, "ETag": answer["ETag"]}
            for field in ("ChecksumCRC32", "ChecksumCRC32C", "ChecksumSHA256"):
                if answer.get(field):
                    part[field] = answer[field]
            parts.append(part)
        return parts

    def _abort(self, key: str, name: str, upload_id: str) -> None:
        try:
            self._call(
                "abort-multipart",
                name,
                lambda: self.client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                ),
                _Attempts(),
            )
        except Exception as exc:
            if _is_no_upload(exc):
                return
            # Parts of an unaborted upload cost storage until a lifecycle rule
            # or a later clean-up removes them; say so, keep the first error.
            log.error(
                "could not abort multipart upload %s of %s: %s",
                upload_id,
                name,
                _describe(exc),
                extra={"event": "store.s3.abort_failed", "object": name},
            )

    def _settle_conflict(self, name: str, data: bytes, attempts: _Attempts) -> None:
        """A 412: success only if our own earlier, unanswered attempt stored it."""
        if attempts.uncertain and self._same_content(name, data):
            log.info(
                "S3 put of %s: an earlier attempt had stored it",
                name,
                extra={"event": "store.s3.put_recovered", "object": name},
            )
            return
        raise ObjectExistsError(f"object {name} already exists", name=name)

    def _landed(self, name: str, data: bytes) -> bool:
        try:
            return self._same_content(name, data)
        except Exception as exc:
            log.warning(
                "could not compare %s with the bytes sent: %s",
                name,
                _describe(exc),
                extra={"event": "store.s3.compare_failed", "object": name},
            )
            return False

    def _same_content(self, name: str, data: bytes) -> bool:
        key = self._key(name)
        try:
            head = self._call(
                "head",
                name,
                lambda: self.client.head_object(Bucket=self.bucket, Key=key),
                _Attempts(),
            )
        except Exception as exc:
            if _is_missing(exc):
                return False
            raise
        if head.get("ContentLength") != len(data):
            return False
        etag = str(head.get("ETag", "")).strip('"')
        md5 = hashlib.md5(data, usedforsecurity=False).hexdigest()
        if etag in (md5, multipart_etag(data, self.options.part_size)):
            return True
        return self.get(name) == data

    def delete(self, name: str) -> None:
        """Remove ``name``; absent is not an error.

        Raises:
            StoreError: S3 failed after bounded retries.
        """
        key = self._key(name)
        try:
            self._call(
                "delete",
                name,
                lambda: self.client.delete_object(Bucket=self.bucket, Key=key),
                _Attempts(),
            )
        except Exception as exc:
            if _is_missing(exc):
                return
            raise self._translate("delete", name, exc) from exc

    # -- reading -----------------------------------------------------------

    def get(self, name: str) -> bytes:
        """The whole object, unverified (callers verify content against its id).

        Raises:
            ObjectMissingError: no such key.
            StoreError: S3 failed after bounded retries.
        """
        key = self._key(name)
        return self._read(
            "get", name, lambda: self.client.get_object(Bucket=self.bucket, Key=key)
        )

    def get_range(self, name: str, offset: int, length: int) -> bytes:
        """Up to ``length`` bytes from ``offset``; empty past the end.

        Raises:
            ObjectMissingError: no such key.
            StoreError: S3 failed after bounded retries.
        """
        if offset < 0 or length < 0:
            raise StoreError(f"invalid range {offset}+{length} for {name}", name=name)
        if length == 0:
            self.size(name)
            return b""
        key = self._key(name)
        header = f"bytes={offset}-{offset + length - 1}"
        try:
            return self._read(
                "get-range",
                name,
                lambda: self.client.get_object(
                    Bucket=self.bucket, Key=key, Range=header
                ),
            )
        except StoreError as exc:
            if exc.fields.get("code") == "InvalidRange":
                return b""
            raise

    def _read(self, op: str, name: str, request: Callable[[], Any]) -> bytes:
        def fetch() -> bytes:
            # Reading the body is inside the retried call: a connection reset
            # mid-body retries the whole request.
            body = request()["Body"]
            try:
                return bytes(body.read())
            finally:
                body.close()

        try:
            data: bytes = self._call(op, name, fetch, _Attempts())
        except Exception as exc:
            raise self._translate(op, name, exc) from exc
        return data

    def list(self, prefix: str = "") -> Iterator[str]:
        """Names under ``prefix``, sorted ascending (S3 lists in UTF-8 order).

        Pages are fetched one request at a time with a continuation token (the
        same walk a boto3 paginator does), so each page is retried on its own.

        Raises:
            StoreError: S3 failed after bounded retries.
        """
        full_prefix = self.prefix + prefix
        token: str | None = None
        names: list[str] = []
        while True:
            kwargs: dict[str, Any] = {
                "Bucket": self.bucket,
                "Prefix": full_prefix,
                "MaxKeys": self.list_page_size,
            }
            if token:
                kwargs["ContinuationToken"] = token
            try:
                page = self._call(
                    "list",
                    prefix or "/",
                    functools.partial(self.client.list_objects_v2, **kwargs),
                    _Attempts(),
                )
            except Exception as exc:
                raise self._translate("list", prefix or "/", exc) from exc
            names.extend(
                obj["Key"][len(self.prefix) :] for obj in page.get("Contents", [])
            )
            if not page.get("IsTruncated"):
                break
            token = page["NextContinuationToken"]
        names.sort()
        return iter(names)

    def exists(self, name: str) -> bool:
        """Whether ``name`` exists.

        Raises:
            StoreError: S3 failed after bounded retries.
        """
        try:
            self.size(name)
        except ObjectMissingError:
            return False
        return True

    def size(self, name: str) -> int:
        """Size in bytes.

        Raises:
            ObjectMissingError: no such key.
            StoreError: S3 failed after bounded retries.
        """
        key = self._key(name)
        try:
            head = self._call(
                "head",
                name,
                lambda: self.client.head_object(Bucket=self.bucket, Key=key),
                _Attempts(),
            )
        except Exception as exc:
            raise self._translate("head", name, exc) from exc
        return int(head["ContentLength"])

    def abort_incomplete_uploads(self) -> int:
        """Abort multipart uploads left under the prefix; returns how many.

        Raises:
            StoreError: S3 failed after bounded retries.
        """
        try:
            answer = self._call(
                "list-uploads",
                "/",
                lambda: self.client.list_multipart_uploads(
                    Bucket=self.bucket, Prefix=self.prefix
                ),
                _Attempts(),
            )
        except Exception as exc:
            raise self._translate("list-uploads", "/", exc) from exc
        uploads = answer.get("Uploads", [])
        for upload in uploads:
            name = upload["Key"][len(self.prefix) :]
            self._abort(upload["Key"], name, upload["UploadId"])
        return len(uploads)


def _is_no_upload(exc: BaseException) -> bool:
    return (
        isinstance(exc, botocore.exceptions.ClientError)
        and _error_code(exc) == "NoSuchUpload"
    )


def _describe(exc: BaseException) -> str:
    if isinstance(exc, botocore.exceptions.ClientError):
        return f"{_error_code(exc) or 'error'} (HTTP {_status(exc)})"
    return f"{type(exc).__name__}: {exc}"
