"""Balance sources: where reconciliation reads what the chains actually hold.

A source answers a batch of :class:`BalanceQuery` with one :class:`Lookup` per
query, in order. Amounts are Python integers in the smallest unit (wei, token
base units, drops); they may exceed 2^64. Three sources exist:

``EvmRpcSource``
    Ethereum JSON-RPC over HTTP. ``ETH`` is read with
    ``eth_getBalance(address, "latest")``; a token given as a contract address
    (``0x`` + 40 hex) is read with ``eth_call`` of ERC-20 ``balanceOf(address)``
    (selector ``0x70a08231`` followed by the address left-padded to 32 bytes).
    Calls travel as JSON-RPC 2.0 batch arrays, ``batch_size`` calls per HTTP
    request, and responses are matched to calls by ``id`` (servers may reorder).

``XrplRpcSource``
    XRP Ledger JSON-RPC (rippled). ``account_info`` on the *validated* ledger;
    ``Balance`` is a string of drops. An account the ledger does not know
    (``actNotFound``) holds 0 drops and the lookup carries the note
    ``account-not-found``. rippled has no documented batch array, so by
    default each account is one HTTP request, ``workers`` of them at once;
    rippled's own ``batch`` method can be enabled with ``batch_size``.

``JsonFileSource``
    A JSON file, either ``{agentId: [{"chain", "token", "balance"}, ...]}`` or a
    legacy wallet backup (``compat/FORMAT.md``; its ``balanceSnapshots`` object
    is used). Balances are decimal strings or JSON integers. The file is parsed
    as a stream (ijson), but what it holds is kept in memory for lookups.

Both HTTP sources use ``urllib.request`` with a timeout per request and a
bounded number of attempts with exponential backoff and jitter for network
errors, HTTP 429 and 5xx. When a node cannot be reached, or answers with
something that is not JSON-RPC, the source raises :class:`BalanceSourceError`
(exit code 14). A JSON-RPC error for one call only makes that one lookup
unavailable (``balance`` None, with a note). URLs are shown without their path
or query in messages, because hosted nodes carry API keys there.
"""

from __future__ import annotations

import json
import logging
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple, Protocol

import ijson
import msgpack

from vaultstore.errors import (
    BalanceSourceError,
    InputError,
    MisuseError,
    NotFoundError,
)

log = logging.getLogger(__name__)

__all__ = [
    "BalanceQuery",
    "BalanceSource",
    "BalanceSourceError",
    "EvmRpcSource",
    "JsonFileSource",
    "Lookup",
    "XrplRpcSource",
    "make_sources",
    "parse_amount",
]

BALANCE_OF_SELECTOR = "0x70a08231"
_CONTRACT = re.compile(r"0x[0-9a-fA-F]{40}")
_HEX_QUANTITY = re.compile(r"0x[0-9a-fA-F]{1,64}")
# 2^256 - 1, the largest EVM amount, has 78 digits; allow a little more.
MAX_AMOUNT_DIGITS = 96
_AMOUNT_LIMIT = 10**MAX_AMOUNT_DIGITS
MAX_DIGIT_RUN = 1000
_LONG_DIGIT_RUN = re.compile(rb"[0-9]{%d,}" % (MAX_DIGIT_RUN + 1))
_DIGITS = b"0123456789"
_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})


class BalanceQuery(NamedTuple):
    """One balance to look up: whose, on which chain, which token, at what address."""

    agent_id: str
    chain: str
    token: str
    address: str


class Lookup(NamedTuple):
    """A source's answer: the balance (None when unavailable) and an optional note."""

    balance: int | None
    note: str | None = None


class BalanceSource(Protocol):
    """Anything that turns a batch of queries into balances, one per query."""

    name: str
    chains: frozenset[str]

    def fetch(self, queries: Sequence[BalanceQuery]) -> list[Lookup]:
        """Look up every query; raises BalanceSourceError if the source fails."""
        ...


def make_sources(
    *,
    evm_rpc: str | None = None,
    xrpl_rpc: str | None = None,
    balances_file: Path | None = None,
    timeout: float = 10.0,
    xrpl_batch: int = 1,
) -> list[BalanceSource]:
    """The sources asked for, RPC nodes first so they win over the file.

    Raises:
        MisuseError: no source was given.
    """
    sources: list[BalanceSource] = []
    if evm_rpc:
        sources.append(EvmRpcSource(evm_rpc, timeout=timeout))
    if xrpl_rpc:
        sources.append(XrplRpcSource(xrpl_rpc, timeout=timeout, batch_size=xrpl_batch))
    if balances_file is not None:
        sources.append(JsonFileSource(balances_file))
    if not sources:
        raise MisuseError("give --evm-rpc, --xrpl-rpc or --balances-file (or several)")
    return sources


def parse_amount(value: object) -> int | None:
    """A non-negative integer from a decimal string or a JSON integer, else None.

    ``int()`` alone would also accept ``"+1"``, ``" 1"``, ``"1_000"`` and
    non-ASCII digits, none of which the legacy format ever writes. The length
    cap keeps hostile input from costing quadratic time (and from Python's
    own digit limit, which would raise instead).
    """
    if isinstance(value, str):
        if value.isascii() and value.isdigit() and len(value) <= MAX_AMOUNT_DIGITS:
            return int(value)
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value if 0 <= value < _AMOUNT_LIMIT else None
    return None


def redact_url(url: str) -> str:
    """scheme://host[:port] of a URL: paths and queries may hold API keys."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or "?"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


class JsonRpcClient:
    """POSTs JSON bodies to one endpoint with a timeout and bounded retries."""

    def __init__(
        self,
        url: str,
        *,
        label: str,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.25,
    ) -> None:
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            raise InputError(f"{label} URL must be http:// or https://: {url!r}")
        self.url = url
        self.label = f"{label} at {redact_url(url)}"
        self.timeout = timeout
        self.attempts = max(1, attempts)
        self.backoff = backoff

    def post(self, body: Any) -> Any:
        """Send one JSON body; return the decoded JSON answer."""
        data = json.dumps(body, separators=(",", ":")).encode()
        for attempt in range(1, self.attempts + 1):
            try:
                return self._post_once(data)
            except _Transient as exc:
                if attempt == self.attempts:
                    raise BalanceSourceError(
                        f"{self.label} unreachable after {attempt} attempts: {exc}",
                        source=self.label,
                    ) from exc
                delay = self.backoff * 2 ** (attempt - 1) * (0.5 + random.random())
                log.warning(
                    "%s failed (%s); retrying in %.2fs",
                    self.label,
                    exc,
                    delay,
                    extra={"event": "balance.source.retry", "attempt": attempt},
                )
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _post_once(self, data: bytes) -> Any:
        request = urllib.request.Request(
            self.url,
            data=data,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as answer:
                raw = answer.read()
        except urllib.error.HTTPError as exc:
            if exc.code in _RETRY_STATUS:
                raise _Transient(f"HTTP {exc.code}") from exc
            raise BalanceSourceError(
                f"{self.label} refused the request: HTTP {exc.code}", source=self.label
            ) from exc
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", None) or exc
            raise _Transient(str(reason)) from exc
        try:
            return json.loads(raw)
        except ValueError as exc:
            raise BalanceSourceError(
                f"{self.label} answered with something that is not JSON",
                source=self.label,
            ) from exc


class _Transient(Exception):
    """A failure worth retrying: network error, timeout, HTTP 429 or 5xx."""


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _parallel_map(func: Any, batches: list[Any], workers: int) -> list[Any]:
    if workers <= 1 or len(batches) <= 1:
        return [func(batch) for batch in batches]
    with ThreadPoolExecutor(max_workers=min(workers, len(batches))) as pool:
        return list(pool.map(func, batches))


class _RpcSource:
    """What the JSON-RPC sources share: a client, a batch size, a thread count.

    ``batch_size`` and ``workers`` default to the subclass's
    :attr:`BATCH_SIZE` and :attr:`WORKERS`.
    """

    LABEL = ""
    BATCH_SIZE = 1
    WORKERS = 1

    def __init__(
        self,
        url: str,
        *,
        batch_size: int | None = None,
        workers: int | None = None,
        timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self.client = JsonRpcClient(
            url,
            label=self.LABEL,
            timeout=timeout,
            attempts=attempts,
            backoff=backoff,
        )
        self.batch_size = max(1, self.BATCH_SIZE if batch_size is None else batch_size)
        self.workers = self.WORKERS if workers is None else workers


class EvmRpcSource(_RpcSource):
    """Balances from an Ethereum JSON-RPC node (ETH and ERC-20 tokens)."""

    name = "evm-rpc"
    chains = frozenset({"evm"})
    LABEL = "EVM JSON-RPC"
    BATCH_SIZE = 100
    WORKERS = 4

    def fetch(self, queries: Sequence[BalanceQuery]) -> list[Lookup]:
        """eth_getBalance / balanceOf for every query, in batch arrays."""
        calls: list[dict[str, Any] | Lookup] = [_evm_call(q) for q in queries]
        pending = [(i, c) for i, c in enumerate(calls) if isinstance(c, dict)]
        results: list[Lookup] = [c if isinstance(c, Lookup) else _NONE for c in calls]
        batches = list(_chunks(pending, self.batch_size))
        for batch, answers in zip(
            batches, _parallel_map(self._send, batches, self.workers), strict=True
        ):
            for (index, _call), lookup in zip(batch, answers, strict=True):
                results[index] = lookup
        return results

    def _send(self, batch: Sequence[tuple[int, dict[str, Any]]]) -> list[Lookup]:
        body = [{"jsonrpc": "2.0", "id": i, **call} for i, call in batch]
        answer = self.client.post(body)
        if not isinstance(answer, list):
            raise BalanceSourceError(
                f"{self.client.label} did not answer a batch request with an array "
                "(does the node support JSON-RPC batches?)",
                source=self.client.label,
            )
        by_id = {item.get("id"): item for item in answer if isinstance(item, dict)}
        return [_evm_lookup(by_id.get(i), call["method"]) for i, call in batch]


_NONE = Lookup(None, "not-looked-up")


def _evm_call(query: BalanceQuery) -> dict[str, Any] | Lookup:
    """The JSON-RPC call for a query, or a Lookup when it cannot be asked."""
    if query.token == "ETH":
        return {"method": "eth_getBalance", "params": [query.address, "latest"]}
    if not _CONTRACT.fullmatch(query.token):
        return Lookup(None, "unsupported-token")
    if not _CONTRACT.fullmatch(query.address):
        return Lookup(None, "invalid-address")
    data = BALANCE_OF_SELECTOR + query.address[2:].lower().rjust(64, "0")
    return {
        "method": "eth_call",
        "params": [{"to": query.token, "data": data}, "latest"],
    }


def _evm_lookup(item: dict[str, Any] | None, method: str) -> Lookup:
    if item is None:
        return Lookup(None, "no-answer")
    if "error" in item:
        error = item["error"]
        message = error.get("message") if isinstance(error, dict) else error
        return Lookup(None, f"rpc-error: {str(message)[:200]}")
    result = item.get("result")
    if method == "eth_call" and result == "0x":
        return Lookup(None, "no-contract")
    if not isinstance(result, str) or not _HEX_QUANTITY.fullmatch(result):
        return Lookup(None, "malformed-result")
    return Lookup(int(result, 16))


class XrplRpcSource(_RpcSource):
    """XRP balances from an XRP Ledger JSON-RPC server, on the validated ledger.

    ``batch_size`` above 1 packs that many ``account_info`` calls into one
    rippled ``batch`` request (``{"method": "batch", "params": [{"method":
    "account_info", "account": ..., "id": n}, ...]}``, answered with an array).
    rippled's HTTP handler accepts it, but it is not in the public API
    reference and proxies or other servers (Clio) may refuse it, so it is off
    by default.
    """

    name = "xrpl-rpc"
    chains = frozenset({"xrp"})
    LABEL = "XRPL JSON-RPC"
    BATCH_SIZE = 1
    WORKERS = 8

    def fetch(self, queries: Sequence[BalanceQuery]) -> list[Lookup]:
        """account_info for every XRP query; other tokens are unsupported."""
        results = [Lookup(None, "unsupported-token")] * len(queries)
        asked = [i for i, q in enumerate(queries) if q.token == "XRP"]
        accounts = [queries[i].address for i in asked]
        if self.batch_size > 1:
            batches = list(_chunks(accounts, self.batch_size))
            parts = _parallel_map(self._account_infos, batches, self.workers)
            answers = [lookup for part in parts for lookup in part]
        else:
            answers = _parallel_map(self._account_info, accounts, self.workers)
        for index, lookup in zip(asked, answers, strict=True):
            results[index] = lookup
        return results

    def _account_info(self, account: str) -> Lookup:
        params = {"account": account, "ledger_index": "validated"}
        answer = self.client.post({"method": "account_info", "params": [params]})
        return self._lookup(answer)

    def _account_infos(self, accounts: Sequence[str]) -> list[Lookup]:
        calls = [
            {
                "method": "account_info",
                "account": a,
                "ledger_index": "validated",
                "id": n,
            }
            for n, a in enumerate(accounts)
        ]
        answer = self.client.post({"method": "batch", "params": calls})
        if not isinstance(answer, list) or len(answer) != len(calls):
            raise BalanceSourceError(
                f"{self.client.label} did not answer a batch of {len(calls)} calls "
                "with as many results (does the server support rippled's batch "
                "method? run without an XRPL batch size)",
                source=self.client.label,
            )
        by_id = {item.get("id"): item for item in answer if isinstance(item, dict)}
        return [self._lookup(by_id.get(n)) for n in range(len(calls))]

    def _lookup(self, answer: Any) -> Lookup:
        result = answer.get("result") if isinstance(answer, dict) else None
        if not isinstance(result, dict):
            raise BalanceSourceError(
                f"{self.client.label} answered without a result object",
                source=self.client.label,
            )
        if result.get("error") == "actNotFound":
            return Lookup(0, "account-not-found")
        if "error" in result:
            return Lookup(None, f"rpc-error: {str(result['error'])[:200]}")
        data = result.get("account_data")
        balance = parse_amount(data.get("Balance")) if isinstance(data, dict) else None
        if balance is None:
            return Lookup(None, "malformed-result")
        return Lookup(balance)


class JsonFileSource:
    """Balances listed in a JSON file (plain per-agent lists or a legacy backup)."""

    name = "json-file"
    chains = frozenset({"evm", "xrp"})

    def __init__(self, path: Path) -> None:
        self.path = path
        # agentId -> msgpack of [[chain, token, amount as decimal string], ...]:
        # one bytes object per agent is about half the size of nested dicts.
        # TODO: still ~300 B per agent in memory (~300 MB for a 1M-agent file);
        # a sorted on-disk index would keep this flat in the number of agents.
        self.balances: dict[str, bytes] = {}
        self._load()

    def fetch(self, queries: Sequence[BalanceQuery]) -> list[Lookup]:
        """The file's balance for each query; absent entries are unavailable."""
        results = []
        for q in queries:
            packed = self.balances.get(q.agent_id)
            found = None
            for chain, token, amount in msgpack.unpackb(packed) if packed else ():
                if chain == q.chain and token == q.token:
                    found = int(amount)
            results.append(Lookup(found, None if found is not None else "not-in-file"))
        return results

    def _load(self) -> None:
        try:
            with self.path.open("rb") as stream:
                _refuse_long_digit_runs(stream, self.path)
                stream.seek(0)
                legacy = _is_legacy_backup(stream)
                stream.seek(0)
                prefix = "balanceSnapshots" if legacy else ""
                for agent_id, entries in ijson.kvitems(stream, prefix, use_float=False):
                    self.balances[agent_id] = self._pack(agent_id, entries)
        except OSError as exc:
            raise NotFoundError(
                f"cannot read balances file {self.path}: {exc.strerror}"
            ) from exc
        except ijson.JSONError as exc:
            raise InputError(
                f"balances file {self.path} is not valid JSON: {exc}"
            ) from exc

    def _pack(self, agent_id: str, entries: Any) -> bytes:
        if not isinstance(entries, list):
            raise InputError(
                f"balances file {self.path}: agent {agent_id!r} is not a list"
            )
        found = []
        for position, entry in enumerate(entries):
            chain = entry.get("chain") if isinstance(entry, dict) else None
            token = entry.get("token") if isinstance(entry, dict) else None
            amount = parse_amount(entry.get("balance")) if chain else None
            if (
                not isinstance(chain, str)
                or not isinstance(token, str)
                or amount is None
            ):
                raise InputError(
                    f"balances file {self.path}: agent {agent_id!r} entry {position} "
                    "needs chain, token and a non-negative integer balance"
                )
            found.append((chain, token, str(amount)))
        return bytes(msgpack.packb(found))


def _refuse_long_digit_runs(stream: BinaryIO, path: Path) -> None:
    """Refuse a file holding a run of more than MAX_DIGIT_RUN digits.

    ijson's C backend (yajl2_c 3.x) crashes the interpreter with a segmentation
    fault on a JSON integer longer than Python's int digit limit (4300), so
    such input must never reach it. One pass of a C regex over the bytes.
    """
    carry = 0  # digits at the end of the previous chunk
    while chunk := stream.read(1 << 20):
        lead = len(chunk) - len(chunk.lstrip(_DIGITS))
        if carry + lead > MAX_DIGIT_RUN or _LONG_DIGIT_RUN.search(chunk):
            raise InputError(
                f"balances file {path} holds a number of more than "
                f"{MAX_DIGIT_RUN} digits"
            )
        tail = len(chunk) - len(chunk.rstrip(_DIGITS))
        carry = carry + tail if tail == len(chunk) else tail


def _is_legacy_backup(stream: Any) -> bool:
    """True when the top-level object's first key is a legacy backup's key."""
    for prefix, event, value in ijson.parse(stream):
        if prefix == "" and event == "map_key":
            return value in ("version", "balanceSnapshots")
        if prefix == "" and event != "start_map":
            raise InputError("a balances file must hold a JSON object")
    return False
