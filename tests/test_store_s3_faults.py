"""S3Store under faults: bounded retries with jitter, multipart clean-up, lost answers.

The moto server injects no faults by itself, so the boto3 client is wrapped
in a proxy that fails chosen calls before (or after) passing them on to the
real server over HTTP.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Callable
from typing import Any

import botocore.exceptions
import pytest

from tests import s3server
from vaultstore.errors import ObjectExistsError, StoreError
from vaultstore.store.open import StoreOptions
from vaultstore.store.s3 import S3Store, make_client

pytestmark = pytest.mark.s3

s3_endpoint = s3server.s3_endpoint
s3_credentials = s3server.s3_credentials
s3_options = s3server.s3_options
s3_bucket = s3server.s3_bucket


def _client_error(status: int, code: str, op: str) -> botocore.exceptions.ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "injected"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return botocore.exceptions.ClientError(response, op)


Fault = Callable[[Callable[..., Any], dict[str, Any], str], Any]


def error_500(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    raise _client_error(500, "InternalError", op)


def slow_down(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    raise _client_error(503, "SlowDown", op)


def timeout(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://injected")


def reset(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    raise botocore.exceptions.ConnectionClosedError(endpoint_url="http://injected")


def denied(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    raise _client_error(403, "AccessDenied", op)


def passthrough(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    return call(**kwargs)


def answer_lost(call: Callable[..., Any], kwargs: dict[str, Any], op: str) -> Any:
    call(**kwargs)  # the request reaches S3 and takes effect...
    raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://injected")


class FaultyClient:
    """A boto3 client proxy: each method pops its next planned fault, if any."""

    def __init__(self, real: Any, plan: dict[str, list[Fault]]) -> None:
        self.real = real
        self.plan = plan
        self.calls: dict[str, int] = {}

    def __getattr__(self, op: str) -> Any:
        method = getattr(self.real, op)

        def wrapped(**kwargs: Any) -> Any:
            self.calls[op] = self.calls.get(op, 0) + 1
            faults = self.plan.get(op)
            if faults:
                return faults.pop(0)(method, kwargs, op)
            return method(**kwargs)

        return wrapped


@pytest.fixture
def real_client(s3_options: StoreOptions) -> Any:
    return make_client(s3_options)


def _store(
    bucket: str, options: StoreOptions, real: Any, plan: dict[str, list[Fault]]
) -> tuple[S3Store, FaultyClient, list[float]]:
    sleeps: list[float] = []
    client = FaultyClient(real, plan)
    store = S3Store(bucket, "r", options, client=client, sleep=sleeps.append)
    return store, client, sleeps


@pytest.mark.reliability(17)
def test_transient_errors_are_retried_with_bounded_jittered_backoff(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {"put_object": [error_500, slow_down, timeout]}
    store, client, sleeps = _store(s3_bucket, s3_options, real_client, plan)
    store.put("data/aa/p", b"payload")
    assert store.get("data/aa/p") == b"payload"
    assert client.calls["put_object"] == 4
    assert len(sleeps) == 3
    for n, delay in enumerate(sleeps, start=1):
        ceiling = min(s3_options.backoff_cap, s3_options.backoff_base * 2 ** (n - 1))
        assert 0 <= delay <= ceiling


@pytest.mark.reliability(17)
def test_jitter_spreads_delays(s3_options: StoreOptions, real_client: Any) -> None:
    options = StoreOptions(**{**s3_options.__dict__, "backoff_base": 1.0})
    store = S3Store("unused", "", options, client=real_client)
    delays = {store._backoff(3) for _ in range(50)}
    assert len(delays) > 40 and max(delays) <= 4.0


@pytest.mark.reliability(17)
def test_retries_are_bounded(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {"put_object": [slow_down] * 10}
    store, client, sleeps = _store(s3_bucket, s3_options, real_client, plan)
    with pytest.raises(StoreError, match="after 4 attempts") as info:
        store.put("data/aa/p", b"payload")
    assert info.value.exit_code == 10
    assert client.calls["put_object"] == s3_options.max_attempts
    assert len(sleeps) == s3_options.max_attempts - 1
    assert not store.exists("data/aa/p")


def test_non_transient_errors_are_not_retried(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    store, client, sleeps = _store(
        s3_bucket, s3_options, real_client, {"get_object": [denied]}
    )
    store.put("k", b"v")
    with pytest.raises(StoreError, match="AccessDenied"):
        store.get("k")
    assert client.calls["get_object"] == 1 and sleeps == []


@pytest.mark.reliability(17)
def test_lost_put_answer_is_settled_as_success(
    s3_options: StoreOptions,
    s3_bucket: str,
    real_client: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plan: dict[str, list[Fault]] = {"put_object": [answer_lost]}
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    with caplog.at_level(logging.INFO, logger="vaultstore.store.s3"):
        store.put("snapshots/0000000001", b"manifest")
    assert client.calls["put_object"] == 2  # the retry met 412
    assert store.get("snapshots/0000000001") == b"manifest"
    assert any(
        getattr(r, "event", "") == "store.s3.put_recovered" for r in caplog.records
    )


def test_lost_answer_with_someone_elses_object_is_a_conflict(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    def other_host_wins(
        call: Callable[..., Any], kwargs: dict[str, Any], op: str
    ) -> Any:
        call(**{**kwargs, "Body": b"other host's manifest"})
        raise botocore.exceptions.ReadTimeoutError(endpoint_url="http://injected")

    plan: dict[str, list[Fault]] = {"put_object": [other_host_wins]}
    store, _, _ = _store(s3_bucket, s3_options, real_client, plan)
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/0000000001", b"my manifest")
    assert store.get("snapshots/0000000001") == b"other host's manifest"


def _uploads(client: Any, bucket: str) -> list[Any]:
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


@pytest.mark.reliability(17)
def test_reset_during_multipart_is_retried(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {"upload_part": [reset, reset]}
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    data = os.urandom(2000)
    store.put("data/bb/big", data)
    assert store.get("data/bb/big") == data
    assert client.calls["upload_part"] == 4 + 2
    assert _uploads(real_client, s3_bucket) == []


@pytest.mark.reliability(17)
def test_failed_multipart_is_aborted_and_rerun_completes(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {"upload_part": [passthrough, *[reset] * 10]}
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    data = os.urandom(2000)
    with pytest.raises(StoreError, match="upload-part 2"):
        store.put("data/bb/big", data)
    assert client.calls["abort_multipart_upload"] == 1
    assert _uploads(real_client, s3_bucket) == []
    assert not store.exists("data/bb/big")

    rerun = S3Store(s3_bucket, "r", s3_options, client=real_client)
    rerun.put("data/bb/big", data)
    assert rerun.get("data/bb/big") == data
    assert _uploads(real_client, s3_bucket) == []


@pytest.mark.reliability(17)
def test_lost_multipart_completion_is_success(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {"complete_multipart_upload": [answer_lost]}
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    data = os.urandom(2000)
    store.put("data/cc/big", data)
    assert store.get("data/cc/big") == data
    assert client.calls["complete_multipart_upload"] == 2
    assert _uploads(real_client, s3_bucket) == []


def test_multipart_conflict_is_aborted(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    def other_host_wins(
        call: Callable[..., Any], kwargs: dict[str, Any], op: str
    ) -> Any:
        real_client.put_object(Bucket=s3_bucket, Key=kwargs["Key"], Body=b"theirs")
        return call(**kwargs)

    plan: dict[str, list[Fault]] = {"complete_multipart_upload": [other_host_wins]}
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    with pytest.raises(ObjectExistsError):
        store.put("snapshots/0000000009", os.urandom(2000))
    assert store.get("snapshots/0000000009") == b"theirs"
    assert client.calls["abort_multipart_upload"] == 1
    assert _uploads(real_client, s3_bucket) == []


def test_reset_while_reading_and_listing_is_retried(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {
        "get_object": [reset, timeout],
        "list_objects_v2": [slow_down],
        "head_object": [error_500],
    }
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    real_client.put_object(Bucket=s3_bucket, Key="r/a", Body=b"abc")
    assert store.get("a") == b"abc"
    assert list(store.list()) == ["a"]
    assert store.size("a") == 3
    assert client.calls == {"get_object": 3, "list_objects_v2": 2, "head_object": 2}


def test_list_pages(s3_options: StoreOptions, s3_bucket: str, real_client: Any) -> None:
    names = [f"data/{i:04d}" for i in range(25)]
    for name in names:
        real_client.put_object(Bucket=s3_bucket, Key="r/" + name, Body=b"")
    plan: dict[str, list[Fault]] = {"list_objects_v2": [passthrough, reset]}
    store, client, _ = _store(s3_bucket, s3_options, real_client, plan)
    store.list_page_size = 10
    assert list(store.list("data/")) == names
    assert client.calls["list_objects_v2"] == 4  # 3 pages, one retried


def test_unreachable_endpoint_fails_fast_and_clearly(s3_credentials: None) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port once the socket is closed.
    options = StoreOptions(
        endpoint_url=f"http://127.0.0.1:{port}",
        region="us-east-1",
        max_attempts=2,
        backoff_base=0.05,
        connect_timeout=0.5,
        read_timeout=1,
    )
    store = S3Store("bucket", "repo", options)
    started = time.monotonic()
    with pytest.raises(StoreError, match="failed after 2 attempts") as info:
        store.put("config", b"x")
    assert time.monotonic() - started < 5
    assert "127.0.0.1" in str(info.value) or "s3://bucket/repo/" in str(info.value)
    with pytest.raises(StoreError):
        list(store.list())


def test_missing_bucket_is_a_store_error(s3_options: StoreOptions) -> None:
    store = S3Store("no-such-bucket-here", "", s3_options)
    with pytest.raises(StoreError, match="does not exist"):
        store.put("config", b"x")


@pytest.mark.reliability(17)
def test_lost_create_answer_leaves_an_upload_that_cleanup_removes(
    s3_options: StoreOptions, s3_bucket: str, real_client: Any
) -> None:
    plan: dict[str, list[Fault]] = {"create_multipart_upload": [answer_lost]}
    store, _, _ = _store(s3_bucket, s3_options, real_client, plan)
    data = os.urandom(2000)
    store.put("data/dd/big", data)
    assert store.get("data/dd/big") == data
    assert len(_uploads(real_client, s3_bucket)) == 1  # the orphan we never saw
    assert store.abort_incomplete_uploads() == 1
    assert _uploads(real_client, s3_bucket) == []
