"""Streaming writer and reader of the legacy wallet-backup JSON file.

On-disk format (``compat/FORMAT.md``; accepted versions: ``"1.0"`` only)::

    {                                   UTF-8, two-space indent, LF,
      "version": "1.0",                 no trailing newline
      "timestamp": <ms>,
      "type": "full" | "incremental",
      "encryptedMasterSeed": "<base64 IV(16) | tag(16) | ciphertext>",
      "wallets": [ {agentId, derivationIndex, evmAddress, xrpAddress,
                    createdAt, metadata?}, ... ],
      "lifecycleRecords": [ {agentId, state, createdAt, ...}, ... ],
      "balanceSnapshots": { "<agentId>": [ {agentId, chain, token, balance,
                                            lastUpdated}, ... ], ... },
      "checksum": "<hex SHA-256>"
    }

The checksum is SHA-256 over the compact JavaScript serialization of the
object with ``checksum`` set to ``""`` (see :mod:`vaultstore.compat.jsformat`
for the number, string and key-order rules). It authenticates nothing: anyone
can recompute it, so importers must re-derive addresses from the seed.

Both directions stream. The writer makes one pass over the records: wallets
go straight into a temporary file beside the target, lifecycle records and
balance lists are spooled (pretty and compact) into temporary files, and
SHA-256 is fed the compact form in file order; then the parts are assembled,
fsynced and renamed into place (mode 0600). Balance lists of index-like agent
ids (``"20260101"``) are spooled apart and written first, ascending, as
JavaScript orders them.

The reader never holds more than one batch of items. It reads the file four
times (the page cache makes the later reads cheap): first a guard pass that
strips strings (C splits, no Python per byte) and counts brackets, refusing
nesting deeper than ``MAX_NESTING`` and strings longer than ``MAX_STRING``
before any parser sees them (ijson's prefix strings grow quadratically with
depth); then one ijson (yajl2_c) ``items`` pass per section — ``wallets.item``,
``lifecycleRecords.item``, ``balanceSnapshots`` key/value pairs — after a
short event parse of the header. ijson's C ``items()`` is about twice as fast
as its coroutine pipelines, so three plain passes beat one shared read. Each
item is validated, hashed in its compact JavaScript form and yielded as soon
as it is complete; the file's size and mtime must not change between passes.
Numbers are read as ``Decimal`` and integers exactly (yajl's float and int64
limits would refuse valid files), then held as JavaScript holds them:
non-integers and integers beyond 2^53 as doubles. The declared checksum is
taken from the end of the file once the parse has proven it valid JSON.

Reader rules and limits:

- the top-level keys must start ``version, timestamp, type,
  encryptedMasterSeed, wallets`` (the service always writes them so); a file
  whose later sections are reordered or carry extra top-level keys fails the
  checksum rather than being mis-read;
- every wallet, record and balance list must pass the journal's validators
  (``vaultstore.model``), so an import that verified cannot fail half way;
  integer fields above 2^53 are refused (JavaScript could not hold them);
- balance keys out of JavaScript order are hashed in a second pass over
  ``balanceSnapshots`` (index-like keys spooled to a temporary file);
- not detected: a duplicated ``balanceSnapshots`` key (both are yielded; the
  checksum follows JavaScript only if none is duplicated); a ``\\udXXX``
  escape of a lone surrogate, which yajl turns into ``?`` (the checksum then
  fails).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from decimal import Decimal
from itertools import accumulate
from pathlib import Path
from typing import IO, Any, NamedTuple

import ijson

from vaultstore import durable, faults
from vaultstore.compat.jsformat import (
    MAX_SAFE,
    dumps_compact,
    dumps_pair,
    encode_utf8,
    is_array_index,
    js_number,
    js_string,
)
from vaultstore.errors import (
    InputError,
    IntegrityError,
    LocalIOError,
    NotFoundError,
    UnsupportedVersionError,
)
from vaultstore.model import (
    Record,
    validate_balances,
    validate_lifecycle,
    validate_wallet,
)

log = logging.getLogger(__name__)

__all__ = [
    "VERSION",
    "LegacyHeader",
    "LegacySummary",
    "write_legacy",
    "read_legacy",
    "read_header",
    "LegacyReader",
    "checksum_mismatch_message",
]

VERSION = "1.0"
SUPPORTED_VERSIONS = ("1.0",)
BACKUP_TYPES = ("full", "incremental")
CHUNK = 1 << 20
MAX_NESTING = 64  # the format needs 5 levels plus free-form metadata
MAX_STRING = 16 << 20  # bytes; the longest legitimate string is the envelope
# ijson's C backend crashes the interpreter (SIGSEGV) on an integer literal
# beyond Python's 4,300-digit conversion limit; a double needs at most ~25.
MAX_NUMBER_DIGITS = 1000

WALLET_KEYS = ("agentId", "derivationIndex", "evmAddress", "xrpAddress", "createdAt")
WALLET_OPTIONAL = ("metadata",)
LIFECYCLE_REQUIRED = (
    "agentId",
    "state",
    "createdAt",
    "totalTransactions",
    "totalVolume",
)
LIFECYCLE_TIMES = ("activatedAt", "suspendedAt", "archivedAt", "lastActivity")
LIFECYCLE_INTS = ("createdAt", "totalTransactions") + LIFECYCLE_TIMES
BALANCE_KEYS = ("agentId", "chain", "token", "balance", "lastUpdated")
_EVM = re.compile(r"0x[0-9a-fA-F]{40}\Z")
_XRP = re.compile(r"r[1-9A-HJ-NP-Za-km-z]{24,34}\Z")
_DECIMAL = re.compile(r"(0|[1-9][0-9]*)\Z")


def checksum_mismatch_message(path: Path | str) -> str:
    """The legacy service's message, with the file it is about."""
    return f"Backup checksum validation failed: {Path(path).name}"


# --------------------------------------------------------------------------
# Writer
# --------------------------------------------------------------------------


class _Part:
    """A temporary file that receives one section, pretty or compact."""

    def __init__(self, directory: Path, label: str) -> None:
        fd, name = tempfile.mkstemp(prefix=f".{label}.", suffix=".tmp", dir=directory)
        self.path = Path(name)
        self.file: IO[bytes] = os.fdopen(fd, "w+b", buffering=CHUNK)

    def rewind(self) -> IO[bytes]:
        self.file.flush()
        self.file.seek(0)
        return self.file

    def discard(self) -> None:
        self.file.close()
        self.path.unlink(missing_ok=True)


def _copy(source: IO[bytes], sink: IO[bytes], hasher: Any = None) -> None:
    while block := source.read(CHUNK):
        sink.write(block) if hasher is None else hasher.update(block)


class _BalanceSpool:
    """Balance lists, spooled; integer-like agent ids are sorted to the front."""

    def __init__(self, directory: Path) -> None:
        self.pretty = _Part(directory, "bal-p")
        self.compact = _Part(directory, "bal-c")
        self.lead: _Part | None = None
        self.lead_index: list[tuple[int, int, int, int]] = []
        self.count = 0

    def add(self, agent_id: str, balances: list[dict[str, Any]]) -> None:
        key = js_string(agent_id)
        compact_text, pretty_text = dumps_pair(balances, 2)
        compact = encode_utf8(key + ":" + compact_text)
        pretty = encode_utf8(key + ": " + pretty_text)
        self.count += 1
        if not is_array_index(agent_id):
            self._put(self.pretty.file, pretty, self.compact.file, compact)
            return
        # JavaScript puts index-like keys first, ascending; keep them apart.
        if self.lead is None:
            self.lead = _Part(self.pretty.path.parent, "bal-lead")
        offset = self.lead.file.tell()
        self.lead.file.write(pretty + compact)
        self.lead_index.append((int(agent_id), offset, len(pretty), len(compact)))

    def _put(self, pf: IO[bytes], p: bytes, cf: IO[bytes], c: bytes) -> None:
        first = pf.tell() == 0
        pf.write((b"\n    " if first else b",\n    ") + p)
        cf.write(c if first else b"," + c)

    def finish(self) -> tuple[list[bytes], list[bytes]]:
        """Prefixes (pretty, compact) of the index-like entries, in order."""
        if self.lead is None:
            return [], []
        self.lead_index.sort()
        src = self.lead.rewind()
        pretty: list[bytes] = []
        compact: list[bytes] = []
        for _, offset, plen, clen in self.lead_index:
            src.seek(offset)
            pretty.append(src.read(plen))
            compact.append(src.read(clen))
        return pretty, compact

    def discard(self) -> None:
        for part in (self.pretty, self.compact, self.lead):
            if part is not None:
                part.discard()


def write_legacy(
    path: Path | str,
    *,
    timestamp_ms: int,
    backup_type: str,
    encrypted_seed: str,
    records: Iterable[Record],
) -> str:
    """Write a legacy backup file from ``records`` in one pass; return its checksum.

    A record's wallet goes into ``wallets``, its lifecycle into
    ``lifecycleRecords`` and its balances into ``balanceSnapshots``. In a full
    backup every wallet gets a ``balanceSnapshots`` key (``[]`` if it has no
    balances); in an incremental only records that carry balances do.

    Raises:
        InputError: a value cannot be written as JSON.
        LocalIOError: the file cannot be written.
    """
    if backup_type not in BACKUP_TYPES:
        raise InputError(
            f"backup type must be full or incremental, not {backup_type!r}"
        )
    target = Path(path)
    directory = target.parent
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        return _write(target, timestamp_ms, backup_type, encrypted_seed, records)
    except OSError as exc:
        raise LocalIOError(f"cannot write {target}: {exc.strerror or exc}") from exc


def _write(
    target: Path, ts: int, backup_type: str, seed: str, records: Iterable[Record]
) -> str:
    directory = target.parent
    out = _Part(directory, target.name)
    life_p, life_c = _Part(directory, "life-p"), _Part(directory, "life-c")
    spool = _BalanceSpool(directory)
    parts = [life_p, life_c]
    try:
        faults.point("legacy.write.before-temp")
        hasher = hashlib.sha256()
        head = (
            f'"version":{js_string(VERSION)},"timestamp":{js_number(ts)},'
            f'"type":{js_string(backup_type)},"encryptedMasterSeed":{js_string(seed)}'
        )
        hasher.update(("{" + head + ',"wallets":[').encode("utf-8"))
        out.file.write(
            (
                f'{{\n  "version": {js_string(VERSION)},\n  "timestamp": '
                f'{js_number(ts)},\n  "type": {js_string(backup_type)},\n  '
                f'"encryptedMasterSeed": {js_string(seed)},\n  "wallets": ['
            ).encode()
        )
        counts = _write_records(
            out.file,
            hasher,
            life_p.file,
            life_c.file,
            spool,
            records,
            backup_type == "full",
        )
        _assemble(out.file, hasher, life_p, life_c, spool, counts)
        checksum = hasher.hexdigest()
        out.file.write(f',\n  "checksum": "{checksum}"\n}}'.encode("ascii"))
        out.file.flush()
        os.fsync(out.file.fileno())
        out.file.close()
        os.chmod(out.path, 0o600)
        faults.point("legacy.write.before-rename")
        os.replace(out.path, target)
        durable.fsync_dir(directory)
        faults.point("legacy.write.after-rename")
        log.info(
            "wrote legacy backup %s: %d wallets, %d lifecycle, %d balance lists",
            target.name,
            counts[0],
            counts[1],
            spool.count,
            extra={"event": "legacy.write", "file": str(target), "type": backup_type},
        )
        return checksum
    finally:
        for part in parts:
            part.discard()
        spool.discard()
        if out.path.exists():
            out.discard()


def _write_records(
    out: IO[bytes],
    hasher: Any,
    life_p: IO[bytes],
    life_c: IO[bytes],
    spool: _BalanceSpool,
    records: Iterable[Record],
    full: bool,
) -> tuple[int, int]:
    wallets = lifecycles = 0
    for record in records:
        if record.wallet is not None:
            compact, pretty = dumps_pair(record.wallet, 2)
            sep = "," if wallets else ""
            hasher.update(encode_utf8(sep + compact))
            out.write(encode_utf8(sep + "\n    " + pretty))
            wallets += 1
        if record.lifecycle is not None:
            compact, pretty = dumps_pair(record.lifecycle, 2)
            sep = "," if lifecycles else ""
            life_c.write(encode_utf8(sep + compact))
            life_p.write(encode_utf8(sep + "\n    " + pretty))
            lifecycles += 1
        if record.balances is not None:
            spool.add(record.agent_id, record.balances)
        elif full and record.wallet is not None:
            spool.add(record.agent_id, [])
    return wallets, lifecycles


def _assemble(
    out: IO[bytes],
    hasher: Any,
    life_p: _Part,
    life_c: _Part,
    spool: _BalanceSpool,
    counts: tuple[int, int],
) -> None:
    out.write(b"\n  ]" if counts[0] else b"]")
    out.write(b',\n  "lifecycleRecords": [')
    hasher.update(b'],"lifecycleRecords":[')
    _copy(life_c.rewind(), out, hasher)
    _copy(life_p.rewind(), out)
    out.write(b"\n  ]" if counts[1] else b"]")
    hasher.update(b'],"balanceSnapshots":{')
    out.write(b',\n  "balanceSnapshots": {')

    lead_p, lead_c = spool.finish()
    rest_p, rest_c = spool.pretty.rewind(), spool.compact.rewind()
    has_rest = spool.pretty.file.seek(0, os.SEEK_END) > 0
    rest_p.seek(0)
    for i, (p, c) in enumerate(zip(lead_p, lead_c, strict=True)):
        out.write((b"\n    " if i == 0 else b",\n    ") + p)
        hasher.update(c if i == 0 else b"," + c)
    if has_rest and lead_p:
        # The rest starts with "\n    "; the lead entries need a comma before it.
        out.write(b",")
        hasher.update(b",")
    _copy(rest_p, out)
    _copy(rest_c, out, hasher)
    out.write(b"\n  }" if spool.count else b"}")
    hasher.update(b'},"checksum":""}')


# --------------------------------------------------------------------------
# Reader
# --------------------------------------------------------------------------


class LegacyHeader(NamedTuple):
    """The scalar fields before ``wallets``."""

    version: str
    timestamp: int
    type: str
    encrypted_seed: str


class LegacySummary(NamedTuple):
    """What a full pass over a file found."""

    header: LegacyHeader
    checksum: str
    computed: str
    wallets: int
    lifecycle: int
    balance_lists: int
    balance_entries: int
    by_state: dict[str, int]

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.computed


_DIGITS = b"0123456789"
_DIGIT_MAP = bytes(b"0"[0] if byte in _DIGITS else 32 for byte in range(256))
_LONG_RUN = b"0" * (MAX_NUMBER_DIGITS + 1)
_NON_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_MAP = bytes.maketrans(b"[]{}", b"\x02\x00\x02\x00")


class _Guard:
    """Refuses deep nesting and huge strings in raw JSON bytes, before parsing.

    Complete strings are removed (:func:`_strip_strings`), the brackets that
    are left are counted; an unterminated string at a chunk's end is carried
    over (and refused once it exceeds MAX_STRING).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.depth = 0
        self.carry = b""
        self.offset = 0
        self.digits = 0  # length of the digit run the last chunk ended in

    def feed(self, chunk: bytes) -> None:
        stripped, self.carry = _strip_strings(self.carry + chunk)
        if len(self.carry) > MAX_STRING:
            raise InputError(
                f"{self.name}: a string near byte {self.offset} is longer than "
                f"{MAX_STRING} bytes"
            )
        self.offset += len(chunk)
        self._check_numbers(stripped)
        brackets = stripped.translate(_DEPTH_MAP, _NON_BRACKETS)
        if not brackets:
            return
        deepest = max(accumulate(brackets, lambda d, b: d + b - 1, initial=self.depth))
        self.depth = self.depth + 2 * brackets.count(2) - len(brackets)
        if deepest > MAX_NESTING:
            raise InputError(
                f"{self.name}: JSON nested deeper than {MAX_NESTING} levels "
                f"(before byte {self.offset})"
            )

    def _check_numbers(self, stripped: bytes) -> None:
        """Refuse a number literal of more than MAX_NUMBER_DIGITS digits."""
        lead = len(stripped) - len(stripped.lstrip(_DIGITS))
        run = self.digits + lead
        # Digits become "0", all else a space: a long run is then a substring
        # search (C, linear), where a regex retried at every digit.
        if run > MAX_NUMBER_DIGITS or _LONG_RUN in stripped.translate(_DIGIT_MAP):
            raise InputError(
                f"{self.name}: a number near byte {self.offset} has more than "
                f"{MAX_NUMBER_DIGITS} digits"
            )
        ended_in = len(stripped) - len(stripped.rstrip(_DIGITS))
        self.digits = run if ended_in == len(stripped) else ended_in


def _strip_strings(buf: bytes) -> tuple[bytes, bytes]:
    """``buf`` without its complete strings, and the unterminated one it ends in.

    Escaped backslashes, then escaped quotes, are dropped first; the quotes
    left delimit strings, so strings are the odd parts of a split on ``"``
    (all C: a regex over the strings cost 20 ms per MiB). The carried string
    is returned without its escapes, which changes nothing when it is fed
    again with the next chunk.
    """
    if b"\\" in buf:
        buf = buf.replace(b"\\\\", b"").replace(b'\\"', b"")
    parts = buf.split(b'"')
    outside = b"".join(parts[0::2])
    return outside, (b'"' + parts[-1] if len(parts) % 2 == 0 else b"")


def _normalize(value: Any) -> Any:
    """Numbers as JavaScript holds them: Decimal and ints beyond 2^53 -> double."""
    if isinstance(value, dict):
        for key, item in value.items():
            if isinstance(item, (dict, list, Decimal)) or (
                type(item) is int and not -MAX_SAFE <= item <= MAX_SAFE
            ):
                value[key] = _normalize(item)
        return value
    if isinstance(value, list):
        return [_normalize(item) for item in value]
    if type(value) is int and -MAX_SAFE <= value <= MAX_SAFE:
        return value
    if isinstance(value, Decimal) or type(value) is int:
        try:
            number = float(value)
        except OverflowError:
            number = float("inf") if value > 0 else float("-inf")
        if type(value) is int:
            return number
        return (
            int(number) if number.is_integer() and abs(number) <= MAX_SAFE else number
        )
    return value


def _int_field(obj: dict[str, Any], key: str, where: str, lo: int = 0) -> None:
    value = obj.get(key)
    if type(value) is not int or value < lo or value > MAX_SAFE:
        raise InputError(f"{where}.{key} must be an integer >= {lo}, got {value!r:.60}")


def _str_field(obj: dict[str, Any], key: str, where: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str) or not value:
        raise InputError(f"{where}.{key} must be a non-empty string")
    return value


def _check_keys(
    obj: Any, where: str, required: Iterable[str], optional: Iterable[str]
) -> None:
    if not isinstance(obj, dict):
        raise InputError(f"{where} must be an object")
    missing = [k for k in required if k not in obj]
    if missing:
        raise InputError(f"{where} lacks {', '.join(missing)}")
    allowed = set(required) | set(optional)
    extra = [k for k in obj if k not in allowed]
    if extra:
        raise InputError(f"{where} has unknown key {extra[0]!r:.60}")


def _safe_ints(obj: dict[str, Any], keys: Iterable[str], where: str) -> None:
    # The journal accepts any non-negative int; JavaScript would turn one
    # beyond 2^53 into a double, so the legacy checksum could not match.
    for key in keys:
        value = obj.get(key)
        if type(value) is int and value > MAX_SAFE:
            raise InputError(f"{where}.{key} is above 2^53")


def _object(obj: Any, where: str) -> dict[str, Any]:
    if not isinstance(obj, dict):
        raise InputError(f"{where} must be an object")
    return obj


def _check_wallet(wallet: Any, where: str) -> dict[str, Any]:
    _journal_rules(validate_wallet, where, _object(wallet, where))
    _safe_ints(wallet, ("createdAt",), where)
    if "metadata" in wallet:
        _normalize(wallet["metadata"])
    return wallet  # type: ignore[no-any-return]


def _journal_rules(check: Any, where: str, *args: Any) -> None:
    """The journal's own validation, so an import never fails half way."""
    try:
        check(*args)
    except InputError as exc:
        raise InputError(f"{where}: {exc.message}") from exc


def _check_lifecycle(record: Any, where: str) -> dict[str, Any]:
    volume = _object(record, where).get("totalVolume")
    if isinstance(volume, dict):
        for token, amount in volume.items():
            if type(amount) is not str:  # the journal would canonicalize it
                raise InputError(
                    f"{where}.totalVolume[{token!r:.60}] must be a decimal string"
                )
    _journal_rules(validate_lifecycle, where, record)
    _safe_ints(record, LIFECYCLE_INTS, where)
    return record  # type: ignore[no-any-return]


def _check_balances(agent_id: str, entries: Any, where: str) -> list[dict[str, Any]]:
    if not isinstance(entries, list):
        raise InputError(f"{where} must be an array")
    for i, entry in enumerate(entries):
        if type(_object(entry, f"{where}[{i}]").get("balance")) is not str:
            raise InputError(f"{where}[{i}].balance must be a decimal string")
    _journal_rules(validate_balances, where, agent_id, entries)
    for i, entry in enumerate(entries):
        _safe_ints(entry, ("lastUpdated",), f"{where}[{i}]")
    return entries


class LegacyReader:
    """One streaming pass over a legacy file.

    Iterating yields ``("wallet", dict)``, ``("lifecycle", dict)`` and
    ``("balances", (agentId, list))`` in file order; when the pass ends,
    :attr:`summary` holds the counts and both checksums. With ``verify=True``
    (the default) a checksum mismatch raises at the end of the pass, so a
    caller that must not act on a bad file makes a first pass to verify.

    Raises:
        NotFoundError: the file does not exist.
        InputError: malformed JSON or a field of the wrong shape (named).
        UnsupportedVersionError: ``version`` is not ``"1.0"``.
        IntegrityError: the checksum does not match (with ``verify=True``).
    """

    def __init__(self, path: Path | str, *, verify: bool = True) -> None:
        self.path = Path(path)
        self.verify = verify
        self.header: LegacyHeader | None = None
        self.summary: LegacySummary | None = None

    def __iter__(self) -> Iterator[tuple[str, Any]]:
        try:
            handle = open(self.path, "rb")
        except FileNotFoundError as exc:
            raise NotFoundError(f"no such file: {self.path}") from exc
        except OSError as exc:
            raise LocalIOError(f"cannot read {self.path}: {exc.strerror}") from exc
        with handle:
            yield from self._pass(handle)

    def _pass(self, handle: IO[bytes]) -> Iterator[tuple[str, Any]]:
        name = self.path.name
        state = _PassState(name)
        stamp = _guard_file(handle, name)
        self.header = _read_header(handle, state, name)
        for prefix in ("wallets.item", "lifecycleRecords.item", "balanceSnapshots"):
            _check_unchanged(handle, stamp, name)
            handle.seek(0)
            if prefix == "balanceSnapshots":
                values: Iterator[Any] = ijson.kvitems(handle, prefix, buf_size=CHUNK)
            else:
                values = ijson.items(handle, prefix, buf_size=CHUNK)
            try:
                for batch in _batches(values):
                    yield from state.drain(prefix, batch)
            except ijson.JSONError as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else "?"
                raise InputError(f"{name}: malformed JSON: {first}") from exc
        if not state.direct:
            _check_unchanged(handle, stamp, name)
            try:
                state.rehash_balances(self.path)
            except ijson.JSONError as exc:
                raise InputError(f"{name}: malformed JSON in balanceSnapshots") from exc
        self.summary = state.finish(_tail_checksum(handle, name))
        if self.verify and not self.summary.checksum_ok:
            raise IntegrityError(
                checksum_mismatch_message(self.path), file=str(self.path)
            )


def _guard_file(handle: IO[bytes], name: str) -> tuple[int, int]:
    """Run the guard over the whole file; returns its (size, mtime) stamp."""
    guard = _Guard(name)
    while True:
        try:
            chunk = handle.read(CHUNK)
        except OSError as exc:
            raise LocalIOError(f"cannot read {name}: {exc.strerror}") from exc
        if not chunk:
            break
        guard.feed(chunk)
    if guard.carry:
        raise InputError(f"{name}: the file ends inside a string")
    return _stamp(handle)


def _stamp(handle: IO[bytes]) -> tuple[int, int]:
    info = os.fstat(handle.fileno())
    return info.st_size, info.st_mtime_ns


def _check_unchanged(handle: IO[bytes], stamp: tuple[int, int], name: str) -> None:
    # Each section is parsed in its own pass (ijson's C items() is twice as
    # fast as its coroutines); the guard ran over the file as it was then.
    if _stamp(handle) != stamp:
        raise IntegrityError(f"{name} changed while it was being read")


def _read_header(handle: Any, state: _PassState, name: str) -> LegacyHeader:
    if hasattr(handle, "seek"):
        handle.seek(0)
    events: list[Any] = []
    try:
        for event in ijson.parse(handle, buf_size=64 << 10):
            events.append(event)
            header = state.header_from(events)
            events.clear()
            if header is not None:
                return header
    except ijson.JSONError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "?"
        raise InputError(f"{name}: malformed JSON: {first}") from exc
    raise InputError(f"{name}: not a legacy backup (no wallets key)")


class _GuardedReader:
    """A file whose every read goes through a guard (for the header peek)."""

    def __init__(self, handle: IO[bytes], name: str) -> None:
        self.handle = handle
        self.guard = _Guard(name)

    def read(self, size: int = -1) -> bytes:
        chunk = self.handle.read(size)
        if chunk:
            self.guard.feed(chunk)
        return chunk


def read_header(path: Path | str) -> LegacyHeader:
    """The header fields of a legacy file, reading only as far as ``wallets``.

    Raises:
        NotFoundError: no such file.
        InputError: not a legacy file, or malformed before ``wallets``.
        UnsupportedVersionError: an unknown ``version``.
    """
    path = Path(path)
    try:
        handle = open(path, "rb")
    except FileNotFoundError as exc:
        raise NotFoundError(f"no such file: {path}") from exc
    except OSError as exc:
        raise LocalIOError(f"cannot read {path}: {exc.strerror}") from exc
    with handle:
        guarded: Any = _GuardedReader(handle, path.name)
        return _read_header(guarded, _PassState(path.name), path.name)


def _batches(values: Iterator[Any], size: int = 512) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for value in values:
        batch.append(value)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


# Python's C encoder writes exactly what JSON.stringify writes for values made
# of strings, booleans, null and integers within +-2^53 under keys that are not
# array indices. Validated wallets without metadata, lifecycle records whose
# token keys are not index-like and balance lists are such values (the
# validators refuse floats and out-of-range integers in them), so they take
# this path; anything else goes through jsformat.
_c_compact = json.JSONEncoder(
    ensure_ascii=False, separators=(",", ":"), check_circular=False
).encode


class _PassState:
    """Counts, the running checksum and the header parse of one pass."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.hasher = hashlib.sha256()
        self.header: LegacyHeader | None = None
        self.fields: dict[str, Any] = {}
        self.keys: list[str] = []
        self.stage = 0  # 0 header, 1 wallets, 2 lifecycle, 3 balances
        self.counts = [0, 0, 0, 0]  # wallets, lifecycle, lists, entries
        self.by_state: dict[str, int] = {}
        self.last_index: int | None = None  # balances: last index-like key
        self.seen_rest = False  # balances: a key that is not index-like
        self.direct = True  # balance keys so far in JS order
        self.pre_balances: Any = None  # hasher state where balances begin

    def header_from(self, events: list[Any]) -> LegacyHeader | None:
        for prefix, event, value in events:
            if prefix == "" and event == "start_map":
                continue
            if prefix == "" and event == "map_key":
                self.keys.append(value)
                if value == "wallets":
                    return self._header_done()
                continue
            if prefix == "" or "." in prefix:
                raise InputError(f"{self.name}: top level must be an object")
            if event in ("start_map", "start_array"):
                raise InputError(f"{self.name}: {prefix} must be a scalar")
            self.fields[prefix] = value
        return None

    def _header_done(self) -> LegacyHeader:
        expected = ["version", "timestamp", "type", "encryptedMasterSeed", "wallets"]
        if self.keys != expected:
            raise InputError(
                f"{self.name}: top-level keys must start with {', '.join(expected)}; "
                f"found {', '.join(k[:40] for k in self.keys)}"
            )
        version = self.fields["version"]
        if version not in SUPPORTED_VERSIONS:
            raise UnsupportedVersionError(
                f"{self.name}: legacy backup version {str(version)[:20]!r} is not "
                f"supported (this build reads {', '.join(SUPPORTED_VERSIONS)})"
            )
        timestamp = self.fields["timestamp"]
        if type(timestamp) is not int or timestamp < 0:
            raise InputError(f"{self.name}: timestamp must be an integer (ms)")
        kind = self.fields["type"]
        if kind not in BACKUP_TYPES:
            raise InputError(f"{self.name}: type must be full or incremental")
        seed = self.fields["encryptedMasterSeed"]
        if not isinstance(seed, str):
            raise InputError(f"{self.name}: encryptedMasterSeed must be a string")
        self.header = LegacyHeader(version, timestamp, kind, seed)
        self.hasher.update(
            (
                f'{{"version":{js_string(version)},"timestamp":{js_number(timestamp)},'
                f'"type":{js_string(kind)},"encryptedMasterSeed":{js_string(seed)},'
                '"wallets":['
            ).encode()
        )
        self.stage = 1
        return self.header

    def _enter(self, stage: int, what: str) -> None:
        if self.stage > stage or self.header is None:
            raise InputError(
                f"{self.name}: {what} is out of place (top-level key order)"
            )
        if stage == 2 and self.stage == 1:
            self.hasher.update(b'],"lifecycleRecords":[')
        if stage == 3 and self.stage < 3:
            if self.stage == 1:
                raise InputError(f"{self.name}: lifecycleRecords is missing")
            self.hasher.update(b'],"balanceSnapshots":{')
            self.pre_balances = self.hasher.copy()
        self.stage = stage

    def drain(self, prefix: str, batch: list[Any]) -> Iterator[tuple[str, Any]]:
        if prefix == "wallets.item":
            self._enter(1, "wallets")
            for wallet in batch:
                n = self.counts[0]
                _check_wallet(wallet, f"{self.name}: wallets[{n}]")
                text = (
                    _c_compact(wallet)
                    if "metadata" not in wallet
                    else dumps_compact(wallet)
                )
                self.hasher.update((b"," if n else b"") + encode_utf8(text))
                self.counts[0] = n + 1
                yield "wallet", wallet
        elif prefix == "lifecycleRecords.item":
            self._enter(2, "lifecycleRecords")
            for record in batch:
                n = self.counts[1]
                _check_lifecycle(record, f"{self.name}: lifecycleRecords[{n}]")
                plain = not any(k[:1].isdigit() for k in record["totalVolume"])
                text = _c_compact(record) if plain else dumps_compact(record)
                self.hasher.update((b"," if n else b"") + encode_utf8(text))
                self.by_state[record["state"]] = (
                    self.by_state.get(record["state"], 0) + 1
                )
                self.counts[1] = n + 1
                yield "lifecycle", record
        else:
            if self.stage < 2:
                self._enter(2, "lifecycleRecords")
            self._enter(3, "balanceSnapshots")
            for agent_id, entries in batch:
                where = f"{self.name}: balanceSnapshots[{agent_id!r:.60}]"
                _check_balances(agent_id, entries, where)
                self._hash_balances(agent_id, entries)
                yield "balances", (agent_id, entries)

    def _hash_balances(self, agent_id: str, entries: list[Any]) -> None:
        self.counts[2] += 1
        self.counts[3] += len(entries)
        if not self.direct:
            return
        if is_array_index(agent_id):
            # JavaScript sorts index-like keys to the front, ascending. A file
            # that has them elsewhere is re-hashed in a second pass at the end.
            number = int(agent_id)
            if self.seen_rest or (
                self.last_index is not None and number <= self.last_index
            ):
                self.direct = False
                return
            self.last_index = number
        else:
            self.seen_rest = True
        text = encode_utf8(js_string(agent_id) + ":" + _c_compact(entries))
        self.hasher.update((b"," if self.counts[2] > 1 else b"") + text)

    def finish(self, checksum: str) -> LegacySummary:
        if self.header is None:
            raise InputError(f"{self.name}: not a legacy backup (no wallets key)")
        if self.stage < 2:
            self._enter(2, "lifecycleRecords")
        if self.stage < 3:
            self._enter(3, "balanceSnapshots")
        self.hasher.update(b'},"checksum":""}')
        return LegacySummary(
            header=self.header,
            checksum=checksum,
            computed=self.hasher.hexdigest(),
            wallets=self.counts[0],
            lifecycle=self.counts[1],
            balance_lists=self.counts[2],
            balance_entries=self.counts[3],
            by_state=dict(sorted(self.by_state.items())),
        )

    def rehash_balances(self, path: Path) -> None:
        """Second pass for a file whose balance keys are not in JS order."""
        if self.direct or self.pre_balances is None:
            return
        hasher = self.pre_balances.copy()
        with (
            open(path, "rb") as handle,
            tempfile.TemporaryFile() as lead,
            tempfile.TemporaryFile() as rest,
        ):
            index: list[tuple[int, int, int]] = []
            first_rest = True
            for agent_id, entries in ijson.kvitems(handle, "balanceSnapshots"):
                text = encode_utf8(js_string(agent_id) + ":" + dumps_compact(entries))
                if is_array_index(agent_id):
                    index.append((int(agent_id), lead.tell(), len(text)))
                    lead.write(text)
                else:
                    rest.write(text if first_rest else b"," + text)
                    first_rest = False
            index.sort()
            for i, (_, offset, size) in enumerate(index):
                lead.seek(offset)
                hasher.update((b"," if i else b"") + lead.read(size))
            if index and not first_rest:
                hasher.update(b",")
            rest.seek(0)
            _copy(rest, None, hasher)  # type: ignore[arg-type]
        self.hasher = hasher
        self.direct = True


_TAIL = re.compile(rb'[{,]\s*"checksum"\s*:\s*"([^"\\]*)"\s*}\s*\Z')


def _tail_checksum(handle: IO[bytes], name: str) -> str:
    """The declared checksum: the last member of the (already parsed) object.

    The parse has proven the file is valid JSON, so a match that closes the
    top-level object is the top-level ``checksum`` member.
    """
    size = handle.seek(0, os.SEEK_END)
    handle.seek(max(0, size - 4096))
    match = _TAIL.search(handle.read())
    if match is None:
        raise InputError(f"{name}: checksum is missing, not a string, or not last")
    return match.group(1).decode("ascii", "replace")


def read_legacy(path: Path | str, *, verify: bool = True) -> LegacyReader:
    """A streaming reader over a legacy backup file (see :class:`LegacyReader`)."""
    return LegacyReader(path, verify=verify)
