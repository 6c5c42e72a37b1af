"""The seed and key commands through the real entry point, and the secrets scan."""

from __future__ import annotations

import json
import logging
import re
import stat
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner
from mnemonic import Mnemonic

from vaultstore.cli.main import main
from vaultstore.crypto import repokeys
from vaultstore.crypto.derive import WalletDeriver
from vaultstore.crypto.keyfile import generate_master_key
from vaultstore.crypto.seed import mnemonic_to_seed
from vaultstore.journal import Event, Journal
from vaultstore.store.local import LocalStore

CANARY_MNEMONIC = Mnemonic("english").to_mnemonic(bytes(range(100, 132)))
CANARY_PASSWORD = "Canary-Passw0rd!-Zx81q"
CANARY_NEW = "Canary-NewPassw0rd!-Qw77"
CANARY_THIRD = "Canary-ThirdPassw0rd!-Rt55"


@dataclass
class Run:
    code: int
    stdout: str
    stderr: str


def _close_log_handlers() -> None:
    """Each run's configure() replaces the handlers; close them so files shut."""
    root = logging.getLogger("vaultstore")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.propagate = True


@pytest.fixture(autouse=True)
def reset_logging() -> Iterator[None]:
    yield
    _close_log_handlers()


class Cli:
    """Runs ``vaultstore`` through ``main()`` and keeps every byte it printed."""

    def __init__(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.vault = tmp_path / "vault"
        self.repo = tmp_path / "repo"
        self.log = tmp_path / "vaultstore.log"
        self.monkeypatch = monkeypatch
        self.transcript: list[str] = []

    def __call__(
        self,
        *args: str,
        stdin: str = "",
        password: str | None = CANARY_PASSWORD,
        new_password: str | None = None,
        repo: bool = False,
    ) -> Run:
        env = {"VAULTSTORE_PASSWORD": password, "VAULTSTORE_NEW_PASSWORD": new_password}
        for name, value in env.items():
            if value is None:
                self.monkeypatch.delenv(name, raising=False)
            else:
                self.monkeypatch.setenv(name, value)
        argv = ["vaultstore", "--vault", str(self.vault), "--log-file", str(self.log)]
        argv += ["--log-level", "debug"]
        if repo:
            argv += ["--repo", str(self.repo)]
        self.monkeypatch.setattr(sys, "argv", [*argv, *args])
        code = 0
        with CliRunner().isolation(input=stdin) as (out, err, _):
            try:
                main()
            except SystemExit as exc:
                code = int(exc.code or 0)
            finally:
                _close_log_handlers()
            run = Run(code, out.getvalue().decode(), err.getvalue().decode())
        self.transcript += [run.stdout, run.stderr]
        return run


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Cli:
    return Cli(tmp_path, monkeypatch)


def canary_wallets(count: int, tampered: int | None = None) -> list[dict[str, object]]:
    deriver = WalletDeriver.from_seed(mnemonic_to_seed(CANARY_MNEMONIC))
    wallets: list[dict[str, object]] = []
    for index in range(count):
        evm, xrp = deriver.addresses(index)
        if index == tampered:
            evm = deriver.addresses(index + 1)[0]
        wallets.append(
            {
                "agentId": f"agent-{index:03d}",
                "derivationIndex": index,
                "evmAddress": evm,
                "xrpAddress": xrp,
                "createdAt": 1_700_000_000_000 + index,
            }
        )
    return wallets


def add_wallets(vault: Path, wallets: list[dict[str, object]]) -> None:
    with Journal.open(vault) as journal:
        journal.append(Event("wallet", str(w["agentId"]), w) for w in wallets)


def make_repository_key(cli: Cli, password: str = CANARY_PASSWORD) -> str:
    return repokeys.add_key(
        LocalStore(cli.repo), generate_master_key(), password, "test"
    )


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# -- init -------------------------------------------------------------------------


def test_init_with_a_new_seed(cli: Cli) -> None:
    run = cli("init", "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {
        "vault": str(cli.vault),
        "words": 24,
        "seed": "new",
        "repository": None,  # none configured: the vault only
    }
    assert mode(cli.vault) == 0o700 and mode(cli.vault / "keyfile") == 0o600
    assert mode(cli.log) == 0o600


def test_init_with_a_twelve_word_seed(cli: Cli) -> None:
    assert json.loads(cli("init", "--words", "12", "--json").stdout)["words"] == 12


def test_init_from_stdin_then_verify(cli: Cli) -> None:
    assert cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC + "\n").code == 0
    add_wallets(cli.vault, canary_wallets(6))
    run = cli("seed", "verify", "--json")
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {"wallets": 6, "mismatches": [], "ok": True}


def test_init_refuses_an_existing_vault(cli: Cli) -> None:
    assert cli("init").code == 0
    before = (cli.vault / "keyfile").read_bytes()
    run = cli("init")
    assert run.code == 2 and "already exists" in run.stderr
    assert (cli.vault / "keyfile").read_bytes() == before


def test_init_with_a_weak_password_writes_nothing(cli: Cli) -> None:
    run = cli("init", password="short")
    assert run.code == 8
    assert "at least 16 characters" in run.stderr and "symbol" in run.stderr
    assert not cli.vault.exists()


def test_init_with_a_bad_mnemonic_writes_nothing(cli: Cli) -> None:
    words = CANARY_MNEMONIC.split()
    run = cli("init", "--mnemonic-stdin", stdin=" ".join(words[:23]))
    assert run.code == 7 and "23 words" in run.stderr
    run = cli(
        "init", "--mnemonic-stdin", stdin=" ".join(words[:5] + ["qqq"] + words[6:])
    )
    assert run.code == 7 and "position 6" in run.stderr
    assert not cli.vault.exists()


def test_no_password_source_is_a_usage_error(cli: Cli) -> None:
    run = cli("init", password=None)
    assert run.code == 2 and "no password" in run.stderr
    assert not cli.vault.exists()


# -- seed -------------------------------------------------------------------------


def test_seed_verify_names_each_mismatch(cli: Cli) -> None:
    cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC)
    add_wallets(cli.vault, canary_wallets(8, tampered=5))
    run = cli("seed", "verify", "--json")
    assert run.code == 3
    assert json.loads(run.stdout) == {
        "wallets": 8,
        "mismatches": ["agent-005"],
        "ok": False,
    }
    assert "agent-005" in run.stderr
    text = cli("seed", "verify")
    assert text.code == 3 and "agent-005" in text.stdout


def test_seed_verify_wrong_password(cli: Cli) -> None:
    cli("init")
    run = cli("seed", "verify", password=CANARY_NEW)
    assert run.code == 4 and "wrong password" in run.stderr


def test_seed_verify_without_a_vault(cli: Cli) -> None:
    assert cli("seed", "verify").code == 12


def test_seed_generate_needs_a_destination(cli: Cli, tmp_path: Path) -> None:
    assert cli("seed", "generate").code == 2
    run = cli("seed", "generate", "--show")  # stdout is not a terminal here
    assert run.code == 2 and "refusing" in run.stderr and run.stdout == ""
    out = tmp_path / "new-mnemonic.txt"
    run = cli("seed", "generate", "--words", "12", "--output", str(out))
    assert run.code == 0 and run.stdout == ""
    assert mode(out) == 0o600
    mnemonic = out.read_text().strip()
    assert Mnemonic("english").check(mnemonic) and len(mnemonic.split()) == 12
    assert mnemonic not in run.stderr
    assert cli("seed", "generate", "--output", str(out)).code == 2
    assert out.read_text().strip() == mnemonic


def test_seed_import_replace(cli: Cli) -> None:
    cli("init")
    add_wallets(cli.vault, canary_wallets(4))
    assert cli("seed", "import", stdin=CANARY_MNEMONIC).code == 2
    run = cli("seed", "import", "--replace", "--json", stdin=CANARY_MNEMONIC)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout)["wallets"] == 4
    assert cli("seed", "verify").code == 0


def test_seed_import_refuses_a_mnemonic_the_wallets_do_not_derive_from(
    cli: Cli,
) -> None:
    cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC)
    add_wallets(cli.vault, canary_wallets(3))
    other = Mnemonic("english").to_mnemonic(bytes(32))
    run = cli("seed", "import", "--replace", stdin=other)
    assert run.code == 3 and "agent-000" in run.stderr
    assert cli("seed", "verify").code == 0  # the old seed is still in place


# -- key --------------------------------------------------------------------------


def test_key_commands(cli: Cli) -> None:
    cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC)
    first = make_repository_key(cli)

    listed = json.loads(cli("key", "list", "--json", repo=True).stdout)
    assert [k["id"] for k in listed] == [first] and listed[0]["kdf"] == "argon2id"

    added = cli("key", "add", "--json", repo=True, new_password=CANARY_NEW)
    assert added.code == 0, added.stderr
    second = json.loads(added.stdout)["added"]
    assert mode(cli.repo / "keys" / second) == 0o600

    refused = cli("key", "remove", first, repo=True)  # the key this password opens
    assert refused.code == 2
    removed = cli("key", "remove", first, repo=True, password=CANARY_NEW)
    assert removed.code == 0, removed.stderr
    assert repokeys.key_ids(LocalStore(cli.repo)) == [second]


def test_key_add_refuses_a_weak_new_password(cli: Cli) -> None:
    make_repository_key(cli)
    run = cli("key", "add", repo=True, new_password="weak-one")
    assert run.code == 8
    assert len(repokeys.key_ids(LocalStore(cli.repo))) == 1


def test_key_commands_need_a_repository(cli: Cli) -> None:
    assert cli("key", "list").code == 2


def test_key_passwd_changes_vault_and_repository(cli: Cli) -> None:
    cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC)
    old_id = make_repository_key(cli)
    run = cli("key", "passwd", "--json", repo=True, new_password=CANARY_NEW)
    assert run.code == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["repository"]["oldKey"] == old_id
    assert repokeys.key_ids(LocalStore(cli.repo)) == [result["repository"]["newKey"]]
    assert cli("seed", "verify").code == 4
    assert cli("seed", "verify", password=CANARY_NEW).code == 0


def test_key_passwd_wrong_old_password_changes_nothing(cli: Cli) -> None:
    cli("init")
    make_repository_key(cli)
    keyfile = (cli.vault / "keyfile").read_bytes()
    run = cli(
        "key", "passwd", repo=True, password=CANARY_NEW, new_password=CANARY_THIRD
    )
    assert run.code == 4
    assert (cli.vault / "keyfile").read_bytes() == keyfile
    assert len(repokeys.key_ids(LocalStore(cli.repo))) == 1


def test_key_passwd_lowered_kdf_in_the_vault_key_file_is_refused(cli: Cli) -> None:
    cli("init")
    path = cli.vault / "keyfile"
    path.write_text(path.read_text().replace('"memory_cost": 64', '"memory_cost": 4'))
    run = cli("key", "passwd", new_password=CANARY_NEW)
    assert run.code == 3 and "damaged" in run.stderr


# -- secrets ----------------------------------------------------------------------


def _secret_patterns() -> list[re.Pattern[bytes]]:
    words = CANARY_MNEMONIC.split()
    patterns = [re.escape(p.encode()) for p in (CANARY_PASSWORD, CANARY_NEW)]
    patterns += [re.escape(CANARY_PASSWORD.encode("utf-16-le"))]
    patterns += [re.escape(CANARY_PASSWORD.encode().hex().encode())]
    # Any three consecutive mnemonic words, whatever separates them.
    for i in range(len(words) - 2):
        patterns.append(rb"\W{1,4}".join(w.encode() for w in words[i : i + 3]))
    return [re.compile(p, re.IGNORECASE) for p in patterns]


def test_no_secret_in_any_output_log_or_file(cli: Cli, tmp_path: Path) -> None:
    runs = [
        cli("init", "--mnemonic-stdin", "--json", stdin=CANARY_MNEMONIC),
        cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC),  # refused
    ]
    add_wallets(cli.vault, canary_wallets(5, tampered=2))
    make_repository_key(cli)
    runs += [
        cli("seed", "verify", "--json"),
        cli("seed", "verify"),
        cli("seed", "verify", password=CANARY_NEW),  # wrong password
        cli("seed", "import", "--replace", stdin=CANARY_MNEMONIC),  # refused: 002
        cli("key", "list", "--json", repo=True),
        cli("key", "add", "--json", repo=True, new_password=CANARY_NEW),
        cli("key", "add", repo=True, new_password="weak"),
        cli("key", "passwd", "--json", repo=True, new_password=CANARY_THIRD),
        cli("key", "passwd", repo=True, password=CANARY_NEW, new_password="x"),
    ]
    assert [r.code for r in runs] == [0, 2, 3, 3, 4, 3, 0, 0, 8, 0, 8]

    patterns = _secret_patterns()
    blobs = {"transcript": "\n".join(cli.transcript).encode()}
    for path in tmp_path.rglob("*"):
        if path.is_file():
            blobs[str(path)] = path.read_bytes()
    assert str(cli.log) in blobs and len(blobs) > 5
    for where, data in blobs.items():
        for pattern in patterns:
            assert pattern.search(data) is None, (
                f"secret {pattern.pattern!r} in {where}"
            )
    for path in [cli.vault, *cli.vault.rglob("*"), cli.repo, *cli.repo.rglob("*")]:
        assert mode(path) & 0o077 == 0, f"{path} is readable by others"


def test_key_passwd_without_a_repository_changes_the_vault(cli: Cli) -> None:
    cli("init", "--mnemonic-stdin", stdin=CANARY_MNEMONIC)
    add_wallets(cli.vault, canary_wallets(2))
    run = cli("key", "passwd", "--json", new_password=CANARY_NEW)
    assert run.code == 0, run.stderr
    assert json.loads(run.stdout) == {"vault": str(cli.vault), "repository": None}
    assert cli("seed", "verify", password=CANARY_NEW).code == 0
    assert cli("seed", "verify").code == 4
    assert mode(cli.vault / "keyfile") == 0o600


def test_init_creates_the_repository_and_records_where_it_is(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    repo = tmp_path / "repository"
    monkeypatch.setenv("VAULTSTORE_REPOSITORY", str(repo))
    run = cli("init", "--json")
    assert run.code == 0, run.stderr
    made = json.loads(run.stdout)["repository"]
    assert made["action"] == "created" and made["url"] == str(repo)
    assert (repo / "config").is_file() and list((repo / "keys").iterdir())

    # Later commands find the repository without VAULTSTORE_REPOSITORY.
    monkeypatch.delenv("VAULTSTORE_REPOSITORY")
    listed = cli("snapshots", "--json")
    assert listed.code == 0, listed.stderr
    assert json.loads(listed.stdout) == []


def test_init_removes_the_vault_when_the_repository_cannot_be_made(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("x")
    monkeypatch.setenv("VAULTSTORE_REPOSITORY", str(blocker / "repo"))
    run = cli("init")
    assert run.code != 0
    assert not cli.vault.exists()


def test_init_on_an_existing_vault_adds_the_missing_repository(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert cli("init").code == 0  # vault only, no repository configured
    again = cli("init")
    assert again.code == 2 and "VAULTSTORE_REPOSITORY" in again.stderr

    monkeypatch.setenv("VAULTSTORE_REPOSITORY", str(tmp_path / "repo"))
    added = cli("init", "--json")
    assert added.code == 0, added.stderr
    assert json.loads(added.stdout)["repository"]["action"] == "created"
    assert cli("init").code == 2  # nothing left to set up
