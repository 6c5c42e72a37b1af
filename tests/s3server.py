"""A real S3-compatible server process for the tests: moto in server mode.

One server per test session, started on first use on a free 127.0.0.1 port
and killed when the session ends. Tests talk HTTP to it through boto3 exactly
as they would to S3. Usable as a pytest plugin (``pytest_plugins =
["s3server"]`` in ``conftest.py``) or by importing the fixtures into a test
module; either way only one process is started.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from vaultstore.store.open import StoreOptions

MOTO_SERVER = Path(sys.executable).with_name("moto_server")
_server: subprocess.Popen[bytes] | None = None
_endpoint: str | None = None

# Credentials for the local emulator only; moto accepts any.
FAKE_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/moto-api/", timeout=0.5):
            return True
    except urllib.error.HTTPError:
        return True
    except OSError:
        return False


def start_server(timeout: float = 30.0) -> str:
    """Start (once) a moto server process; returns its endpoint URL."""
    global _server, _endpoint
    if _endpoint is not None:
        return _endpoint
    port = _free_port()
    env = dict(os.environ, S3_UPLOAD_PART_MIN_SIZE="256", **FAKE_CREDENTIALS)
    _server = subprocess.Popen(
        [str(MOTO_SERVER), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    atexit.register(stop_server)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout
    while not _answers(url):
        if _server.poll() is not None or time.monotonic() > deadline:
            stop_server()
            raise RuntimeError(f"moto_server did not start on {url}")
        time.sleep(0.05)
    _endpoint = url
    return url


def stop_server() -> None:
    """Kill the server process (its whole process group) if it runs."""
    global _server, _endpoint
    if _server is None:
        return
    if _server.poll() is None:
        os.killpg(_server.pid, signal.SIGTERM)
        try:
            _server.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(_server.pid, signal.SIGKILL)
            _server.wait()
    _server = None
    _endpoint = None


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """The endpoint URL of the session's moto server."""
    yield start_server()
    stop_server()


@pytest.fixture
def s3_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fake credentials and no AWS config files, so boto3 never looks further."""
    for name, value in FAKE_CREDENTIALS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_CONFIG_FILE", os.devnull)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", os.devnull)
    monkeypatch.delenv("AWS_PROFILE", raising=False)


@pytest.fixture
def s3_options(s3_endpoint: str, s3_credentials: None) -> StoreOptions:
    """Options for the test server: tiny multipart sizes, fast retries."""
    return StoreOptions(
        endpoint_url=s3_endpoint,
        region="us-east-1",
        multipart_threshold=1024,
        part_size=512,
        max_attempts=4,
        backoff_base=0.001,
        backoff_cap=0.01,
        connect_timeout=2,
        read_timeout=10,
        addressing_style="path",
    )


@pytest.fixture
def s3_bucket(s3_options: StoreOptions) -> str:
    """A new empty bucket on the test server."""
    from vaultstore.store.s3 import make_client

    name = f"test-{uuid.uuid4().hex[:16]}"
    make_client(s3_options).create_bucket(Bucket=name)
    return name
