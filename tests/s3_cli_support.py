"""Helpers of the end-to-end repository tests (S3, several destinations, two hosts).

Commands run through the real entry point: in this process (``run_main``), in
a forked child (``run_forked``), or as several forked children released at the
same instant (``run_together``), so two "hosts" really race. Wallet addresses
derive from the canary mnemonic, so restores verify them against the seed.

``PrivateS3Server`` is a moto server process of the test's own (not the
session's), which the test may kill and restart. Moto keeps state in memory
only; with ``persist=True`` it records every request to a file and, after a
restart, replays the recording, so the restarted server holds what the killed
one had acknowledged (or received): a crude but real stand-in for a durable
S3 service that went down and came back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from tests import s3server
from tests.campaign_support import (
    MNEMONIC,
    PASSWORD,
    Result,
    balances,
    base_env,
    child_main,
    lifecycle,
    run_forked,
    run_main,
    wallet,
)
from vaultstore.journal import Journal

__all__ = [
    "MNEMONIC",
    "PASSWORD",
    "PrivateS3Server",
    "Result",
    "cli_env",
    "closed_port",
    "create_bucket",
    "events_ndjson",
    "journal_digest",
    "run_forked",
    "run_main",
    "run_together",
    "s3_names",
]


def cli_env(vault: Path, **extra: str) -> dict[str, str]:
    """Environment of one CLI run: test KDF, password, vault, fake AWS credentials."""
    settings = {
        "VAULTSTORE_PASSWORD": PASSWORD,
        "VAULTSTORE_VAULT": str(vault),
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        **s3server.FAKE_CREDENTIALS,
    }
    settings.update(extra)
    env = base_env(**settings)
    env.pop("AWS_PROFILE", None)
    return env


def events_ndjson(path: Path, agents: Iterable[int], wei: int = 0) -> Path:
    """Write wallet, lifecycle and balance events of ``agents`` as NDJSON."""
    lines: list[dict[str, Any]] = []
    for i in agents:
        agent = f"agent-{i:05d}"
        lines.append({"kind": "wallet", "wallet": wallet(i)})
        lines.append({"kind": "lifecycle", "record": lifecycle(i)})
        lines.append(
            {"kind": "balances", "agentId": agent, "balances": balances(i, wei)}
        )
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def balance_changes(path: Path, agents: Iterable[int], wei: int) -> Path:
    """NDJSON balance updates for ``agents`` (all set to ``wei``)."""
    lines = [
        {"kind": "balances", "agentId": f"agent-{i:05d}", "balances": balances(i, wei)}
        for i in agents
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def journal_digest(vault: Path) -> str:
    """The state digest of a vault's journal, as restore reports it (hex)."""
    with Journal.open(vault) as journal:
        return journal.state_digest().hex()


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (connections are refused at once)."""
    return s3server._free_port()


def create_bucket(endpoint: str, name: str) -> None:
    from vaultstore.store.open import StoreOptions
    from vaultstore.store.s3 import make_client

    options = StoreOptions(endpoint_url=endpoint, region="us-east-1")
    make_client(options).create_bucket(Bucket=name)


def s3_names(endpoint: str, url: str) -> list[str]:
    """Every object name under an ``s3://bucket/prefix`` repository."""
    from vaultstore.store.open import StoreOptions, parse_s3_url
    from vaultstore.store.s3 import S3Store

    bucket, prefix = parse_s3_url(url)
    options = StoreOptions(endpoint_url=endpoint, region="us-east-1", max_attempts=1)
    return list(S3Store(bucket, prefix, options).list())


def local_names(root: Path) -> list[str]:
    """Every object name of a local repository (temporary files excluded)."""
    from vaultstore.store.local import LocalStore

    return list(LocalStore(root).list())


def run_together(
    jobs: Sequence[tuple[dict[str, str], Sequence[str]]],
    *,
    meet_at: str | None = None,
    meeting_dir: Path | None = None,
    stagger: float = 0.0,
) -> list[Result]:
    """Run several commands in forked children released at the same instant.

    Each child is a real process running the real entry point; all of them
    block on one pipe until every child exists, then start together. With
    ``meet_at`` (a fault point name), each child also waits at the first pass
    of that point until every other child has reached it (or 10 s passed), so
    e.g. their manifest writes really collide; child ``n`` then goes on after
    ``n * stagger`` seconds.
    """
    import vaultstore.cli.main  # noqa: F401  (imported once, before forking)

    if meet_at is not None:
        meeting_dir = meeting_dir or Path(tempfile.mkdtemp(prefix="meet-"))
        meeting_dir.mkdir(parents=True, exist_ok=True)
    go_read, go_write = os.pipe()
    children: list[tuple[int, Any, Any]] = []
    for rank, (env, args) in enumerate(jobs):
        out, err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        pid = os.fork()
        if pid == 0:
            os.close(go_write)
            os.read(go_read, 1)
            if meet_at is not None and meeting_dir is not None:
                _meet(meet_at, meeting_dir, len(jobs), rank * stagger)
            _child_main(env, args, out.fileno(), err.fileno())
        children.append((pid, out, err))
    os.close(go_read)
    os.write(go_write, b"g" * len(children))
    os.close(go_write)
    results = []
    for pid, out, err in children:
        _, status = os.waitpid(pid, 0)
        code = (
            -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        )
        out.seek(0)
        err.seek(0)
        results.append(
            Result(
                code,
                out.read().decode(errors="replace"),
                err.read().decode(errors="replace"),
            )
        )
        out.close()
        err.close()
    return results


def _meet(point: str, meeting_dir: Path, parties: int, delay: float) -> None:
    from vaultstore import faults

    met = [False]

    def hook(name: str) -> None:
        if name != point or met[0]:
            return
        met[0] = True
        (meeting_dir / str(os.getpid())).touch()
        deadline = time.monotonic() + 10
        while len(list(meeting_dir.iterdir())) < parties:
            if time.monotonic() > deadline:
                return
            time.sleep(0.002)
        time.sleep(delay)

    faults.set_hook(hook)


def _child_main(env: dict[str, str], args: Sequence[str], out: int, err: int) -> None:
    child_main(env, args, out, err, os.open(os.devnull, os.O_RDONLY))


class PrivateS3Server:
    """A moto server process owned by one test: start, kill -9, restart."""

    def __init__(self, workdir: Path, *, persist: bool = True) -> None:
        self.port = s3server._free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.recording = workdir / "moto-recording.jsonl"
        self.persist = persist
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, **s3server.FAKE_CREDENTIALS)
        if self.persist:
            env["MOTO_ENABLE_RECORDING"] = "True"
            env["MOTO_RECORDER_FILEPATH"] = str(self.recording)
        self.process = subprocess.Popen(
            [str(s3server.MOTO_SERVER), "-H", "127.0.0.1", "-p", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 30
        while not s3server._answers(self.endpoint):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"moto_server did not start on {self.endpoint}")
            time.sleep(0.05)
        if self.persist and self.recording.exists():
            self._replay()

    def _replay(self) -> None:
        # The replay's own requests are not recorded again (moto turns
        # recording off while it replays).
        request = urllib.request.Request(
            self.endpoint + "/moto-api/recorder/replay-recording", method="POST"
        )
        with urllib.request.urlopen(request, timeout=60) as answer:
            if answer.status != 200:
                raise RuntimeError(f"moto replay answered {answer.status}")

    def kill(self) -> None:
        """SIGKILL the server (its whole process group), as a crash would."""
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()
        self.process = None

    def restart(self) -> None:
        self.kill()
        self.start()
