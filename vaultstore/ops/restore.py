"""Restore a vault from a snapshot, on this machine or a fresh one.

Order of work, chosen so that nothing corrupt ever becomes visible:

1. resolve the chain (a full, then its incrementals in order) and verify every
   manifest MAC, sequence and parent/digest link — before anything is written;
2. open the seed envelope carried by the newest manifest with the password;
3. stream the snapshot's records into a new journal in a temporary directory
   *beside* the target (same filesystem, so the final rename is atomic). The
   repository hands records over in chunks of a few thousand, as the bytes
   the batches hold, while its reader threads open the next objects; no
   Python code runs per record here, only in the journal load;
4. compare the state digest the load computed over the records it wrote
   (each record hashed once) with the digest the backup recorded; re-derive
   wallet addresses from the seed (a reservoir sample by default, all with
   ``verify_addresses="all"``);
5. seal the seed into the new vault under the password, fsync, and rename the
   directory into place. A failure at any step removes the temporary
   directory; the target is untouched until the final rename.
"""

from __future__ import annotations

import itertools
import logging
import math
import os
import random
import shutil
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaultstore import durable, faults
from vaultstore.crypto.derive import verify_wallets
from vaultstore.crypto.envelope import open_seed
from vaultstore.errors import (
    AddressMismatchError,
    IntegrityError,
    MisuseError,
    NotFoundError,
)
from vaultstore.journal import Journal, check_record_owners
from vaultstore.locks import VaultLock
from vaultstore.model import decode_record, records_digest_sum
from vaultstore.repo.manifest import Manifest
from vaultstore.repo.repository import (
    HWM_PREFIX,
    LAST_SNAPSHOT_PREFIX,
    VAULT_ID_META,
    Repository,
)
from vaultstore.vault import Adoption, Vault, prepare_adoption

log = logging.getLogger(__name__)

# Wallets re-derived by default after an authenticated restore: the manifests
# are MAC'd, so the sample guards against a wrong seed, not against tampering.
DEFAULT_SAMPLE = 256

VERIFY_MODES = ("sample", "all", "none")


@dataclass
class RestoreReport:
    """What a restore did, for the summary and ``--json``."""

    snapshot: str
    chain: list[str]
    target: str
    agents: int = 0
    wallets_verified: int = 0
    digest: str = ""
    dry_run: bool = False
    timings: dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def restore(
    repo: Repository,
    spec: str,
    target: Path,
    password: str,
    *,
    at_ms: int | None = None,
    dry_run: bool = False,
    replace: bool = False,
    verify_addresses: str = "sample",
    kdf_profile: str = "production",
    extra_meta: dict[str, bytes] | None = None,
) -> RestoreReport:
    """Restore snapshot ``spec`` (an id, a sequence, or ``latest``) into ``target``.

    ``extra_meta`` is stored in the restored vault's journal (the CLI passes
    the repository location). The restored vault also remembers the
    repository's newest sequence (rollback protection) and, when the snapshot
    is its vault's newest, that vault's identity and last snapshot, so its
    next backup continues the chain; restoring an older snapshot makes a new
    vault identity, whose first backup must be a full.

    Raises:
        IntegrityError: a manifest, object, digest or chain link is wrong.
        AddressMismatchError: a wallet address does not derive from the seed.
        WrongPasswordError: the password does not open the seed envelope.
        MisuseError: the target exists and ``replace`` is false.
    """
    if verify_addresses not in VERIFY_MODES:
        raise MisuseError(
            f"--verify-addresses must be one of {', '.join(VERIFY_MODES)}"
        )
    target = target.absolute()
    _recover_interrupted_swap(target)
    if target.exists() and not replace and not dry_run:
        raise MisuseError(f"target {target} exists; pass --replace to replace it")
    if not target.parent.is_dir():
        raise NotFoundError(f"the parent directory of {target} does not exist")

    timer = _Timer()
    chain = timer.run("verify-chain", lambda: repo.resolve(spec, at_ms=at_ms))
    head = chain[-1]
    meta = _vault_meta(repo, head, extra_meta)
    mnemonic = timer.run(
        "open-seed", lambda: open_seed(head.seed_envelope, password, kdf_profile)
    )
    report = RestoreReport(
        snapshot=head.id,
        chain=[m.id for m in chain],
        target=str(target),
        dry_run=dry_run,
    )
    staging = _staging_dir(target)
    # The new vault's key derivations run on a thread during the load.
    kdf_pool = ThreadPoolExecutor(1, "vaultstore-restore-kdf")
    adoption: Future[Adoption] | None = None
    try:
        if not dry_run:
            adoption = kdf_pool.submit(
                prepare_adoption, password, mnemonic, kdf_profile
            )
        sample = _SampleCollector(verify_addresses)
        counted = _CountingChunks(repo.iter_state_columns(head), sample)
        if dry_run:
            digest = timer.run("read-records", counted.drain_with_digest)
        else:
            _io(f"restore staging directory {staging}", lambda: staging.mkdir(0o700))
            digest = timer.run(
                "write-journal",
                lambda: _load_journal(staging, counted, head, meta),
            )
        _check_digest(digest, head.digest_after, head.id)
        if head.states is not None and counted.count != head.agents:
            raise IntegrityError(
                f"snapshot {head.id}: {counted.count} agents restored, "
                f"its manifest counts {head.agents}",
                snapshot=head.id,
            )
        report.agents = counted.count
        report.digest = digest.hex()
        report.wallets_verified = timer.run(
            "verify-addresses", lambda: _verify(mnemonic, sample.wallets)
        )
        if adoption is not None:
            sealed = adoption
            timer.run("seal-seed", lambda: Vault.install(staging, sealed.result()))
            faults.point("restore.before-swap")
            timer.run(
                "swap",
                lambda: _io(
                    f"restore target {target}",
                    lambda: _swap_into_place(staging, target, replace),
                ),
            )
            faults.point("restore.after-swap")
    finally:
        kdf_pool.shutdown(wait=True, cancel_futures=True)
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    report.timings = timer.timings
    log.info(
        "restored snapshot %s into %s",
        head.id,
        target,
        extra={"event": "restore.done", "agents": report.agents, "dryRun": dry_run},
    )
    return report


class _Timer:
    def __init__(self) -> None:
        self.timings: dict[str, float] = {}

    def run(self, step: str, func: Callable[[], Any]) -> Any:
        start = time.perf_counter()
        try:
            return func()
        finally:
            self.timings[step] = round(time.perf_counter() - start, 3)


class _SampleCollector:
    """Keeps the wallets to re-derive: every one, or a uniform sample.

    The sample is a reservoir of :data:`DEFAULT_SAMPLE` records kept with
    geometric skips (Li's "Algorithm L"): whole chunks of records pass
    untouched between picks, and only about k·(1 + ln(N/k)) records are ever
    looked at, so a sampled restore decodes a few thousand records, not
    millions. Records are decoded once, at the end.
    """

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.wallets: list[tuple[str, int, str, str]] = []
        self._reservoir: list[bytes] = []
        self._seen = 0
        self._rng = random.Random()
        self._weight = 1.0
        self._next = 0

    def offer_chunk(self, chunk: list[bytes]) -> None:
        if self.mode == "none":
            return
        if self.mode == "all":
            for data in chunk:
                self._keep_wallet(data)
            return
        start, end = self._seen, self._seen + len(chunk)
        if len(self._reservoir) < DEFAULT_SAMPLE:
            room = DEFAULT_SAMPLE - len(self._reservoir)
            self._reservoir += chunk[:room]
            if len(self._reservoir) == DEFAULT_SAMPLE:
                self._weight = self._shrink(1.0)
                self._next = start + room + self._skip()
        while len(self._reservoir) == DEFAULT_SAMPLE and self._next < end:
            slot = self._rng.randrange(DEFAULT_SAMPLE)
            self._reservoir[slot] = chunk[self._next - start]
            self._weight = self._shrink(self._weight)
            self._next += 1 + self._skip()
        self._seen = end

    def finish(self) -> None:
        """Decode the sampled records into :attr:`wallets`."""
        for data in self._reservoir:
            self._keep_wallet(data)
        self._reservoir = []

    def _shrink(self, weight: float) -> float:
        return weight * math.exp(math.log(self._uniform()) / DEFAULT_SAMPLE)

    def _skip(self) -> int:
        if self._weight >= 1.0:  # rounding; log1p(-1) is undefined
            return 0
        return int(math.log(self._uniform()) / math.log1p(-self._weight))

    def _uniform(self) -> float:
        return self._rng.random() or 1e-300  # never log(0)

    def _keep_wallet(self, data: bytes) -> None:
        record = decode_record(data)
        wallet = record.wallet
        if wallet is None:
            return
        entry: Any = (
            record.agent_id,
            wallet.get("derivationIndex"),
            wallet.get("evmAddress"),
            wallet.get("xrpAddress"),
        )
        self.wallets.append(entry)


class _CountingChunks:
    """Passes a snapshot's records through, counting them and feeding the sampler.

    Works chunk by chunk: no Python code runs per record here (the records
    go straight on to the journal load, which hashes each one once).
    """

    def __init__(
        self,
        columns: Iterator[tuple[list[str], list[bytes]]],
        sample: _SampleCollector,
    ) -> None:
        self._columns = columns
        self._sample = sample
        self.count = 0

    def columns(self) -> Iterator[tuple[list[str], list[bytes]]]:
        """The ``(agent ids, records)`` chunks, counted and sampled."""
        offer = self._sample.offer_chunk
        for agents, chunk in self._columns:
            self.count += len(chunk)
            offer(chunk)
            yield agents, chunk
        self._sample.finish()

    def records(self) -> Iterator[bytes]:
        return itertools.chain.from_iterable(chunk for _, chunk in self.columns())

    def drain_with_digest(self) -> bytes:
        """Read everything, writing nothing: the state digest of the records
        (each checked to be its agent's, as a load would)."""
        total = 0
        for agents, chunk in self.columns():
            check_record_owners(agents, chunk)
            total += records_digest_sum(chunk)
        return (total % (1 << 256)).to_bytes(32, "big")


def _vault_meta(
    repo: Repository, head: Manifest, extra: dict[str, bytes] | None
) -> dict[str, bytes]:
    """Journal meta of the restored vault (see :func:`restore`)."""
    meta = dict(extra or {})
    meta[HWM_PREFIX + repo.id] = str(max(repo.newest_seq(), head.seq)).encode()
    try:
        own = repo.latest_of(head.vault) if head.vault else None
    except IntegrityError:
        # A damaged newer manifest: do not claim the chain; a full starts anew.
        own = None
    if own is not None and own.id == head.id:
        meta[VAULT_ID_META] = head.vault.encode("ascii")
        meta[LAST_SNAPSHOT_PREFIX + repo.id] = head.id.encode("ascii")
    return meta


def _load_journal(
    staging: Path,
    counted: _CountingChunks,
    head: Manifest,
    meta: dict[str, bytes],
) -> bytes:
    """Write the new journal; returns the state digest of the records it holds.

    The digest is the one the load computed over the very bytes it inserted
    (``Journal.state_digest``), so each record is hashed once, not twice. A
    manifest that carries the counts by lifecycle state spares the load a
    pass over every record; an older one is counted record by record.
    """
    if head.states is not None:
        journal = Journal.bulk_load_columns(
            staging, counted.columns(), head.lsn_end, head.states, expected=head.agents
        )
    else:
        journal = Journal.bulk_load(
            staging, counted.records(), head.lsn_end, expected=head.agents
        )
    try:
        for key, value in meta.items():
            journal.set_meta(key, value)
        return journal.state_digest()
    finally:
        journal.close()


def _io(what: str, action: Callable[[], Any]) -> Any:
    """Run a filesystem step; an OSError becomes one clear LocalIOError."""
    try:
        return action()
    except OSError as exc:
        raise durable.io_error(what, exc) from exc


def _check_digest(actual: bytes, expected: bytes, snapshot_id: str) -> None:
    if actual != expected:
        raise IntegrityError(
            f"snapshot {snapshot_id}: restored state digest {actual.hex()[:16]}… "
            f"differs from the recorded {expected.hex()[:16]}…",
            snapshot=snapshot_id,
        )


def _verify(mnemonic: str, wallets: list[tuple[str, int, str, str]]) -> int:
    if not wallets:
        return 0
    bad = verify_wallets(mnemonic, wallets)
    if bad:
        shown = ", ".join(bad[:20]) + (" …" if len(bad) > 20 else "")
        raise AddressMismatchError(
            f"{len(bad)} wallet(s) do not derive from the seed: {shown}", agents=bad
        )
    return len(wallets)


def _staging_dir(target: Path) -> Path:
    token = os.urandom(4).hex()
    return target.parent / f".{target.name}.restore-{token}"


def _old_dir(target: Path) -> Path:
    return target.parent / f".{target.name}.old"


def _recover_interrupted_swap(target: Path) -> None:
    """Finish or undo a replacing restore that was killed between its renames.

    The old vault is set aside under a fixed name; if the target is missing it
    goes back into place, if the target exists the set-aside copy is removed.
    """
    old = _old_dir(target)
    if not old.exists():
        return
    if target.exists():
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(old, target)
    durable.fsync_dir(target.parent)
    log.warning(
        "an interrupted restore had set %s aside; it is back in place",
        target,
        extra={"event": "restore.recovered", "target": str(target)},
    )


def _swap_into_place(staging: Path, target: Path, replace: bool) -> None:
    """Atomically move the staged vault to ``target`` (replacing it if asked).

    Replacing holds the old vault's lock, so no ingest or backup is writing to
    it while it is set aside; a kill between the two renames is repaired by
    the next restore (:func:`_recover_interrupted_swap`).
    """
    durable.fsync_tree(staging)
    if not target.exists():
        os.rename(staging, target)
        durable.fsync_dir(target.parent)
        return
    if not replace:
        raise MisuseError(f"target {target} exists; pass --replace to replace it")
    old = _old_dir(target)
    with VaultLock(target, "restore --replace").acquire():
        os.rename(target, old)
        durable.fsync_dir(target.parent)
        faults.point("restore.between-renames")
        os.rename(staging, target)
        durable.fsync_dir(target.parent)
    shutil.rmtree(old, ignore_errors=True)
