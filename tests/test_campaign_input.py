"""Bad-input campaign (RELIABILITY.md cases 10, 11, 22, 23).

- every command with missing or malformed arguments: exit 2, no traceback;
- wrong password: one KDF run, exit 4, nothing written, the same message for
  every wrong password; weak password: exit 8, one message per failed rule;
- KDF parameters lowered in a key file (vault and repository): refused;
- hostile payloads fed to every decoder of repository objects, manifests,
  pack tables, the index cache, records, key files and NDJSON (Hypothesis,
  deterministic profile): only the documented error, never another exception;
  decompression bombs and deep nesting are bounded;
- bad wallet data through ``vaultstore ingest``: exit 7 naming line and field,
  nothing written; hostile agent ids never reach the filesystem.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import msgpack
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.campaign_support import (
    MNEMONIC,
    PASSWORD,
    T0,
    Source,
    agent_events,
    base_env,
    files_under,
    restore_digest,
    run_main,
)
from vaultstore.crypto.password import password_failures
from vaultstore.crypto.purpose import RepoKeys
from vaultstore.errors import (
    InputError,
    IntegrityError,
    UnsupportedVersionError,
    WrongPasswordError,
)
from vaultstore.repo import tree
from vaultstore.repo.index import Index
from vaultstore.repo.manifest import _from_body
from vaultstore.repo.objects import (
    BATCH,
    CHANGES,
    LEAF,
    MAX_OBJECT_PLAINTEXT,
    ROOT,
    ObjectCodec,
    decode_batch,
)
from vaultstore.repo.pack import _parse_toc

# ------------------------------------------------------------ usage errors

MISUSE = [
    ("frobnicate",),
    ("--log-level", "loud", "status"),
    ("backup",),
    ("backup", "--full", "--bogus"),
    ("restore",),
    ("restore", "--target"),
    ("restore", "--target", "t", "--verify-addresses", "some"),
    ("restore", "--target", "t", "--at", "yesterday-ish"),
    ("ingest",),
    ("init", "--words", "13"),
    ("forget", "--keep-last", "-1"),
    ("forget", "--type", "some"),
    ("export-json", "latest", "--bogus"),
    ("import-json",),
    ("verify-json",),
    ("key", "remove"),
    ("key", "frob"),
    ("seed", "generate"),
    ("seed", "generate", "--words", "7", "--output", "m.txt"),
    ("reconcile",),
    ("reconcile", "--xrpl-batch", "0", "--balances-file", "b.json"),
    ("reconcile", "--timeout", "soon", "--balances-file", "b.json"),
    ("drill", "--agents", "0"),
    ("status", "extra-argument"),
    ("check", "--read-data=yes"),
    ("snapshots", "--json", "--json=2"),
    ("config", "show", "--bogus"),
    ("unlock", "--bogus"),
]


@pytest.mark.reliability(22)
@pytest.mark.parametrize("args", MISUSE, ids=lambda a: " ".join(a))
def test_missing_or_malformed_arguments_exit_2(
    tmp_path: Path, args: tuple[str]
) -> None:
    env = base_env(
        VAULTSTORE_VAULT=str(tmp_path / "vault"),
        VAULTSTORE_REPOSITORY=str(tmp_path / "repo"),
        VAULTSTORE_PASSWORD=PASSWORD,
    )
    done = run_main(env, *args)
    assert done.code == 2, (args, done.code, done.out, done.err)
    assert "Traceback" not in done.err
    assert list(tmp_path.iterdir()) == [], "a refused command wrote something"


@pytest.mark.reliability(22)
def test_backup_without_a_repository_is_a_usage_error(tmp_path: Path) -> None:
    src = Source(tmp_path / "s")
    env = src.env()
    del env["VAULTSTORE_REPOSITORY"]
    done = run_main(env, "backup", "--full")
    assert done.code == 2, done.err


# --------------------------------------------------------------- passwords


@pytest.fixture
def backed_up(tmp_path: Path) -> Source:
    src = Source(tmp_path / "src")
    src.append(agent_events(range(12)))
    src.backup("full", T0)
    return src


def count_kdf_runs(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    from vaultstore.crypto import kdf

    runs: list[int] = []
    real = kdf.derive

    def counting(*args: Any, **kwargs: Any) -> Any:
        runs.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(kdf, "derive", counting)
    return runs


@pytest.mark.reliability(10)
@pytest.mark.parametrize(
    "args",
    [
        ("restore", "--target", "{tmp}/restored"),
        ("backup", "--full"),
        ("seed", "verify"),
        ("export-json", "latest", "-o", "{tmp}/out.json"),
    ],
    ids=lambda a: a[0],
)
def test_wrong_password_one_kdf_run_exit_4_nothing_written_no_hint(
    backed_up: Source,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    args: tuple[str, ...],
) -> None:
    args = tuple(a.replace("{tmp}", str(tmp_path)) for a in args)
    fresh = args[0] == "restore"
    messages = []
    for wrong in ("Wrong-Passw0rd-One!!", "An0ther-Wr0ng-one??"):
        runs = count_kdf_runs(monkeypatch)
        before = {p: p.stat().st_mtime_ns for p in files_under(tmp_path)}
        env = backed_up.env(VAULTSTORE_PASSWORD=wrong)
        if fresh:
            env["VAULTSTORE_VAULT"] = str(tmp_path / "no-vault")
        done = run_main(env, *args)
        assert done.code == 4, (args, done.err)
        assert len(runs) == 1, f"{len(runs)} KDF runs for one wrong password"
        after = {p: p.stat().st_mtime_ns for p in files_under(tmp_path)}
        changed = [p for p in after if before.get(p) != after[p]]
        assert [p for p in changed if p.name not in ("lock",)] == [], changed
        assert wrong not in done.err + done.out and PASSWORD not in done.err
        messages.append(done.err.strip().splitlines()[-1])
    assert messages[0] == messages[1], "the message depends on the password"


@pytest.mark.reliability(10)
@pytest.mark.parametrize(
    "weak",
    ["abc", "password", "aaaaaaaaaaaaaaaaaaaaaaaa", "Short1!", "alllowercaseletters"],
)
def test_weak_password_on_creation_lists_every_failed_rule(
    tmp_path: Path, weak: str
) -> None:
    failures = password_failures(weak)
    assert failures
    env = base_env(VAULTSTORE_VAULT=str(tmp_path / "vault"), VAULTSTORE_PASSWORD=weak)
    done = run_main(env, "init", "--mnemonic-stdin", stdin=MNEMONIC + "\n")
    assert done.code == 8, done.err
    for failure in failures:
        assert failure in done.err, failure
    if weak not in ("abc", "password"):  # (those are words of the message itself)
        assert weak not in done.err
    assert not (tmp_path / "vault" / "keyfile").exists()


def _lower_kdf(path: Path) -> None:
    import hashlib

    from vaultstore.crypto.kdf import canonical_json

    body = json.loads(path.read_text())
    body["kdf"]["params"]["memory_cost"] = 4
    body["kdf"]["params"]["iterations"] = 1
    rest = {k: v for k, v in body.items() if k != "checksum"}
    body["checksum"] = hashlib.sha256(canonical_json(rest)).hexdigest()
    os.chmod(path, 0o600)
    path.write_text(json.dumps(body))


@pytest.mark.reliability(11)
def test_lowered_kdf_parameters_are_refused_before_any_kdf_run(
    backed_up: Source, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The vault's key file.
    _lower_kdf(backed_up.vault_dir / "keyfile")
    runs = count_kdf_runs(monkeypatch)
    done = run_main(backed_up.env(), "seed", "verify")
    assert done.code == 3, done.err
    assert "floor" in done.err and runs == []
    # The repository's key file, from a fresh machine.
    for key in (backed_up.repo_dir / "keys").iterdir():
        _lower_kdf(key)
    done = run_main(
        backed_up.env(VAULTSTORE_VAULT=str(tmp_path / "none")),
        "restore",
        "--target",
        str(tmp_path / "t"),
    )
    assert done.code in (3, 4), done.err
    assert runs == [] and not (tmp_path / "t").exists()


# ------------------------------------------------------ hostile object payloads

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | st.binary(max_size=64)
)


def _containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    keys = st.text(max_size=8) | st.integers(-(2**63), 2**64 - 1)
    return st.lists(inner, max_size=6) | st.dictionaries(keys, inner, max_size=5)


values = st.recursive(scalars, _containers, max_leaves=30)
packed = values.map(lambda v: bytes(msgpack.packb(v, use_bin_type=True)))
hostile = packed | st.binary(max_size=300)
ids32 = st.binary(min_size=32, max_size=32)
# Structures close to the real ones, so the checks after the type test run too.
entries_like = st.tuples(
    st.lists(ids32 | st.binary(max_size=40) | st.integers(), max_size=4),
    st.lists(
        st.lists(st.text(max_size=6) | st.integers(), min_size=0, max_size=4).map(list)
        | st.tuples(
            st.text(max_size=6),
            st.integers(-3, 6) | st.none() | st.text(),
            st.integers(-(2**63), 2**64 - 1)
            | st.none()
            | st.floats(allow_nan=False, allow_infinity=False),
        ).map(list),
        max_size=5,
    ),
).map(lambda v: bytes(msgpack.packb(list(v), use_bin_type=True)))
root_like = st.lists(
    st.integers(-2, 40) | st.binary(max_size=70) | st.none() | st.text(max_size=3),
    min_size=7,
    max_size=7,
).map(lambda v: bytes(msgpack.packb(v, use_bin_type=True)))

CODEC = ObjectCodec(b"\x01" * 16, RepoKeys.from_master(b"\x02" * 32))


def _only(errors: tuple[type[BaseException], ...], func: Any, *args: Any) -> None:
    try:
        func(*args)
    except errors:
        pass


@pytest.mark.reliability(22)
@settings(suppress_health_check=[HealthCheck.too_slow])
@given(data=hostile | entries_like | root_like)
def test_object_decoders_raise_only_integrity_errors(data: bytes) -> None:
    """Sealed with the real key (so AEAD passes), then opened and decoded."""
    for kind, decode in (
        (BATCH, decode_batch),
        (LEAF, tree.decode_entries),
        (CHANGES, tree.decode_entries),
        (ROOT, tree.decode_root),
    ):
        oid, sealed = CODEC.seal(kind, data)
        plain = CODEC.open(kind, oid, sealed)
        assert plain == data
        _only((IntegrityError,), decode, plain, f"kind {kind}")


@pytest.mark.reliability(22)
@given(data=hostile, kind=st.integers(1, 4), oid=ids32)
def test_forged_sealed_bytes_are_integrity_errors(
    data: bytes, kind: int, oid: bytes
) -> None:
    with pytest.raises(IntegrityError):
        CODEC.open(kind, oid, data)


zstd_frames = (
    st.binary(max_size=200)
    .map(lambda b: zstandard.ZstdCompressor(level=1).compress(b))
    .flatmap(
        lambda frame: st.tuples(
            st.just(frame), st.integers(0, len(frame) - 1), st.integers(0, 255)
        )
    )
    .map(lambda t: t[0][: t[1]] + bytes((t[2],)) + t[0][t[1] + 1 :])
)


@pytest.mark.reliability(22)
@settings(max_examples=40)
@given(payload=zstd_frames | st.binary(max_size=300), kind=st.integers(1, 4))
def test_hostile_zstd_payloads_are_integrity_errors(payload: bytes, kind: int) -> None:
    """Authenticated but hostile compressed bytes: a mutated or random frame."""
    oid = b"\x07" * 32
    sealed = CODEC._sealer.seal(payload, CODEC.associated(kind, oid))
    with pytest.raises(IntegrityError):
        CODEC.open(kind, oid, sealed)


@pytest.mark.reliability(22)
@given(data=hostile)
def test_manifest_body_and_pack_table_decoders(data: bytes) -> None:
    _only((IntegrityError, UnsupportedVersionError), _from_body, data, "m")
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, TypeError):
        return
    _only((IntegrityError,), _parse_toc, value, b"\x00" * 16, 8 + 100)


@pytest.mark.reliability(22)
@given(data=hostile)
def test_record_decoder_raises_only_value_errors(data: bytes) -> None:
    from vaultstore.model import decode_record

    _only((ValueError, msgpack.ExtraData), decode_record, data)


@pytest.mark.reliability(22)
@given(data=hostile)
def test_hostile_index_cache_is_rebuilt_not_fatal(
    tmp_path_factory: Any, data: bytes
) -> None:
    import blake3

    path = tmp_path_factory.mktemp("idx") / "index"
    body = b"VSIDX\x01" + data
    path.write_bytes(body + blake3.blake3(body).digest())
    index = Index(path)
    try:
        assert index.load() in (True, False)
    except IndexError:
        pass  # a known bug: test_campaign_known_failures


@pytest.mark.reliability(22)
def test_decompression_bomb_is_refused_with_bounded_memory() -> None:
    import resource

    compressor = zstandard.ZstdCompressor(level=1)
    zeros = b"\0" * (1 << 20)
    chunk = compressor.compressobj()
    bomb = b"".join(
        chunk.compress(zeros) for _ in range((MAX_OBJECT_PLAINTEXT >> 20) + 8)
    )
    bomb += chunk.flush()
    assert len(bomb) < 200_000
    sealed = CODEC._sealer.seal(bomb, CODEC.associated(BATCH, b"\0" * 32))
    pid = os.fork()
    if pid == 0:  # measure the peak in a child, alone
        code = 1
        try:
            CODEC.open(BATCH, b"\0" * 32, sealed)
        except IntegrityError:
            peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss >> 10
            code = 0 if peak_mib < 2 * (MAX_OBJECT_PLAINTEXT >> 20) + 400 else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0, "bomb decoded, or memory unbounded"


@pytest.mark.reliability(22)
def test_deep_nesting_in_objects_is_an_integrity_error() -> None:
    deep = b"\x91" * 200_000 + b"\xc0"
    for decode in (decode_batch, tree.decode_entries, tree.decode_root):
        with pytest.raises(IntegrityError):
            decode(deep, "deep")
    huge_len = b"\xdd\xff\xff\xff\xff"  # an array claiming 4 billion items
    with pytest.raises(IntegrityError):
        decode_batch(huge_len, "huge")


@pytest.mark.reliability(22)
@given(
    text=st.text(max_size=400)
    | st.binary(max_size=400).map(lambda b: b.decode("latin-1"))
)
def test_hostile_key_files_never_escape_the_error_catalogue(text: str) -> None:
    from vaultstore.crypto.keyfile import open_keyfile

    _only(
        (IntegrityError, UnsupportedVersionError, WrongPasswordError),
        open_keyfile,
        text.encode("utf-8", "surrogatepass"),
        "pw",
        "test",
    )


# ------------------------------------------------------------ hostile NDJSON


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=12), inner, max_size=5
    )


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    _json_containers,
    max_leaves=20,
)
event_like = st.fixed_dictionaries(
    {"kind": st.sampled_from(["wallet", "lifecycle", "balances", "remove", "x"])},
    optional={
        "wallet": json_values,
        "record": json_values,
        "agentId": json_values,
        "balances": json_values,
        "time": json_values,
    },
)


@pytest.mark.reliability(22, 23)
@settings(
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(lines=st.lists(event_like.map(json.dumps) | st.text(max_size=60), max_size=4))
def test_hostile_ndjson_is_an_input_error_and_writes_nothing(
    tmp_path: Path, lines: list[str]
) -> None:
    from vaultstore.ingest import ingest_lines
    from vaultstore.journal import Journal

    # A directory per example: Hypothesis replays examples while shrinking.
    vault = Path(tempfile.mkdtemp(dir=tmp_path)) / "vault"
    with Journal.create(vault) as journal:
        digest = journal.state_digest()
        try:
            ingest_lines(
                journal, [line.encode("utf-8", "surrogatepass") for line in lines]
            )
        except InputError:
            assert journal.state_digest() == digest and journal.last_lsn() == 0


def _ingest(src: Source, tmp_path: Path, *lines: str) -> Any:
    path = tmp_path / "in.ndjson"
    path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass") + b"\n")
    return run_main(src.env(), "ingest", str(path))


def _wallet_line(agent: Any, **extra: Any) -> str:
    from tests.campaign_support import wallet

    body = dict(wallet(1), agentId=agent, **extra)
    return json.dumps({"kind": "wallet", "wallet": body})


BAD_LINES = {
    "agent-id-dotdot-slash": (_wallet_line("../../outside"), "agentId"),
    "agent-id-nul": (_wallet_line("agent\u0000x"), "agentId"),
    "agent-id-backslash": (_wallet_line("..\\..\\x"), "agentId"),
    "agent-id-4000-chars": (_wallet_line("a" * 4000), "agentId"),
    "agent-id-empty": (_wallet_line(""), "agentId"),
    "agent-id-number": (_wallet_line(12), "agentId"),
    "balance-float": (
        json.dumps(
            {
                "kind": "balances",
                "agentId": "a",
                "balances": [
                    {
                        "agentId": "a",
                        "chain": "evm",
                        "token": "ETH",
                        "balance": 1.5e20,
                        "lastUpdated": 1,
                    }
                ],
            }
        ),
        "balance",
    ),
    "balance-negative": (
        json.dumps(
            {
                "kind": "balances",
                "agentId": "a",
                "balances": [
                    {
                        "agentId": "a",
                        "chain": "evm",
                        "token": "ETH",
                        "balance": "-5",
                        "lastUpdated": 1,
                    }
                ],
            }
        ),
        "balance",
    ),
    "balance-hex": (
        json.dumps(
            {
                "kind": "balances",
                "agentId": "a",
                "balances": [
                    {
                        "agentId": "a",
                        "chain": "evm",
                        "token": "ETH",
                        "balance": "0x10",
                        "lastUpdated": 1,
                    }
                ],
            }
        ),
        "balance",
    ),
    "chain-unknown": (
        json.dumps(
            {
                "kind": "balances",
                "agentId": "a",
                "balances": [
                    {
                        "agentId": "a",
                        "chain": "btc",
                        "token": "BTC",
                        "balance": "5",
                        "lastUpdated": 1,
                    }
                ],
            }
        ),
        "chain",
    ),
    "evm-address-short": (_wallet_line("a", evmAddress="0x1234"), "evmAddress"),
    "derivation-index-above-2^31": (
        _wallet_line("a", derivationIndex=2**31),
        "derivationIndex",
    ),
    "unknown-field": (_wallet_line("a", secret="x"), "secret"),
    "invalid-utf8": ('{"kind":"remove","agentId":"\udcff"}', "json"),
    "deep-nesting": ("[" * 100_000, "nested"),
    "not-an-object": ("[1,2,3]", "object"),
    "nan-constant": ('{"kind":"balances","agentId":"a","balances":NaN}', "json"),
    "unknown-kind": ('{"kind":"delete","agentId":"a"}', "kind"),
    "lifecycle-bad-state": (
        json.dumps(
            {
                "kind": "lifecycle",
                "record": {
                    "agentId": "a",
                    "state": "zombie",
                    "createdAt": 1,
                    "totalTransactions": 1,
                    "totalVolume": {},
                },
            }
        ),
        "state",
    ),
}


@pytest.mark.reliability(23)
@pytest.mark.parametrize("name", list(BAD_LINES))
def test_bad_wallet_data_is_refused_naming_line_and_field(
    tmp_path: Path, name: str
) -> None:
    src = Source(tmp_path / "s")
    good = _wallet_line("agent-ok")
    before = src.digest()
    outside = sorted(p for p in tmp_path.rglob("*"))
    bad, field = BAD_LINES[name]
    done = _ingest(src, tmp_path, good, bad)
    assert done.code == 7, (name, done.code, done.err[-500:])
    message = done.err.strip().splitlines()[-1]
    assert "line 2" in message and field.lower() in message.lower(), message
    assert len(message) < 500, "the message echoes the hostile input"
    assert "Traceback" not in done.err
    assert src.digest() == before, "the good line before it was kept"
    new = sorted(p for p in tmp_path.rglob("*"))
    ignored = ("in.ndjson", "lock")  # the input itself; the (empty) vault lock
    assert [p for p in new if p not in outside and p.name not in ignored] == []


@pytest.mark.reliability(23)
def test_numbers_and_huge_amounts_are_normalised_and_kept_exactly(
    tmp_path: Path,
) -> None:
    """Balances as JSON integers become decimal strings; 2**128+1 survives exactly."""
    src = Source(tmp_path / "s")
    huge = 2**128 + 1
    line = json.dumps(
        {
            "kind": "balances",
            "agentId": "agent-00001",
            "balances": [
                {
                    "agentId": "agent-00001",
                    "chain": "evm",
                    "token": "ETH",
                    "balance": huge,
                    "lastUpdated": 1,
                }
            ],
        }
    )
    assert _ingest(src, tmp_path, _wallet_line("agent-00001"), line).code == 0
    src.backup("full", T0)
    target = tmp_path / "r"
    assert restore_digest(src.repo_dir, target) == src.digest()
    from vaultstore.journal import Journal

    with Journal.open(target) as journal:
        record = journal.get("agent-00001")
        assert record is not None and record.balances is not None
        assert record.balances[0]["balance"] == str(huge)


@pytest.mark.reliability(23)
def test_odd_but_valid_agent_ids_never_become_paths(tmp_path: Path) -> None:
    """'..', '.', spaces inside, unicode, 256 chars: accepted as data, never paths."""
    src = Source(tmp_path / "s")
    odd = ["..", ".", "a b", "ü-\u202e-agent", "x" * 256, "-rf"]
    lines = [_wallet_line(agent, derivationIndex=i) for i, agent in enumerate(odd)]
    done = _ingest(src, tmp_path, *lines)
    assert done.code == 0, done.err
    before = set(tmp_path.rglob("*"))
    src.backup("full", T0)
    assert restore_digest(src.repo_dir, tmp_path / "r") == src.digest()
    out = tmp_path / "exp" / "backup.json"
    assert run_main(src.env(), "export-json", "--from-vault", "-o", str(out)).code == 0
    created = set(tmp_path.rglob("*")) - before
    allowed = (src.repo_dir, tmp_path / "r", tmp_path / "exp", src.vault_dir)
    strays = [p for p in created if not any(p.is_relative_to(a) for a in allowed)]
    assert strays == []
    for p in created:
        assert not any(agent in p.name for agent in odd if len(agent) > 2)


@pytest.mark.reliability(23)
@pytest.mark.parametrize(
    "mnemonic, why, code",
    [
        (" ".join(MNEMONIC.split()[:-1] + ["qwertyx"]), "word list", 7),
        (" ".join(MNEMONIC.split()[:-1] + ["abandon"]), "checksum", 7),
        (" ".join(MNEMONIC.split()[:11]), "11 words", 7),
        (MNEMONIC + " legal", "13 words", 7),
        ("", "no mnemonic", 2),
    ],
)
def test_invalid_mnemonics_are_refused(
    tmp_path: Path, mnemonic: str, why: str, code: int
) -> None:
    env = base_env(
        VAULTSTORE_VAULT=str(tmp_path / "vault"), VAULTSTORE_PASSWORD=PASSWORD
    )
    done = run_main(env, "init", "--mnemonic-stdin", stdin=mnemonic + "\n")
    assert done.code == code, done.err
    assert why in done.err
    assert not (tmp_path / "vault" / "keyfile").exists()
    for word in mnemonic.split()[:3]:
        assert f"{word} " not in done.err  # the mnemonic is not echoed


@pytest.mark.reliability(22)
def test_an_overlong_ndjson_line_is_refused_without_reading_it_all(
    tmp_path: Path,
) -> None:
    src = Source(tmp_path / "s")
    path = tmp_path / "long.ndjson"
    with open(path, "wb") as out:
        out.write(b'{"kind":"remove","agentId":"')
        out.write(b"a" * (17 << 20))
        out.write(b'"}\n')
    done = run_main(src.env(), "ingest", str(path))
    assert done.code == 7, done.err
    assert "line 1" in done.err and "longer" in done.err
