"""The TOML config file: defaults, destinations, secret refusal, masking."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from vaultstore.config import Config, Destination, load_config, mask_url, masked
from vaultstore.errors import InputError, NotFoundError
from vaultstore.retention import Duration, KeepRules

FULL_EXAMPLE = """
timezone = "Europe/Berlin"
password_file = "secrets/password"
destinations = ["local", "s3", {url = "s3://mirror/wallets", region = "us-east-1"}]

[local]
path = "backups"

[s3]
bucket = "wallet-backups"
prefix = "/prod/"
region = "eu-central-1"
endpoint = "https://s3.example.net:9000"
checksum = "when_supported"

[schedule]
full = "30 1 * * 6"
incremental = "0 */6 * * *"

[retention.full]
keep_weekly = 10
keep_monthly = 12

[retention.incremental]
keep_within = "1y2m"
keep_last = 3
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vaultstore.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_match_the_seed() -> None:
    config = load_config(None)
    assert config == Config()
    assert config.full_schedule == "0 0 * * 0"
    assert config.incremental_schedule == "0 0 * * *"
    assert config.timezone == "UTC"
    assert config.retention.full == KeepRules(weekly=52)
    assert config.retention.incremental == KeepRules(within=Duration(days=30))
    assert config.destinations == () and config.primary is None
    assert [j.kind for j in config.jobs()] == ["full", "incremental"]


def test_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, ""))
    assert config.full_schedule == "0 0 * * 0" and config.source is not None


def test_full_example(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, FULL_EXAMPLE))
    assert config.tz() == ZoneInfo("Europe/Berlin")
    assert config.retention.tz == ZoneInfo("Europe/Berlin")
    assert config.password_file == tmp_path / "secrets/password"
    assert config.local_path == tmp_path / "backups"
    assert [d.url for d in config.destinations] == [
        str(tmp_path / "backups"),
        "s3://wallet-backups/prod",
        "s3://mirror/wallets",
    ]
    primary, s3, mirror = config.destinations
    assert config.primary == primary and config.secondaries == (s3, mirror)
    assert primary.kind == "local" and s3.kind == "s3"
    assert (
        s3.endpoint == "https://s3.example.net:9000" and s3.checksum == "when_supported"
    )
    assert mirror.region == "us-east-1" and mirror.endpoint == s3.endpoint
    options = s3.store_options()
    assert options.endpoint_url == s3.endpoint and options.checksum == "when_supported"
    assert config.full_schedule == "30 1 * * 6"
    assert config.retention.full == KeepRules(weekly=10, monthly=12)
    assert config.retention.incremental == KeepRules(
        last=3, within=Duration(years=1, months=2)
    )


def test_default_destination_order_is_local_then_s3(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, '[s3]\nbucket = "b"\n[local]\npath = "/srv/x"\n')
    )
    assert [d.url for d in config.destinations] == ["/srv/x", "s3://b"]


@pytest.mark.parametrize(
    "snippet",
    [
        '[s3]\naws_secret_access_key = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"\n',
        '[s3]\naws_access_key_id = "AKIAIOSFODNN7EXAMPLE"\n',
        'aws_session_token = "FwoGZXIvYXdzEXAMPLE"\n',
        '[s3]\nSecret-Key = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"\n',
        'destinations = [{url = "s3://b", secret_access_key = "wJalrXUtnFEMI"}]\n',
    ],
)
@pytest.mark.reliability(24)
def test_credentials_in_the_file_are_refused(tmp_path: Path, snippet: str) -> None:
    with pytest.raises(InputError) as caught:
        load_config(write(tmp_path, snippet))
    message = caught.value.message
    assert "credential" in message and "AWS chain" in message
    assert "EXAMPLE" not in message and "wJalr" not in message
    assert caught.value.exit_code == 7


@pytest.mark.parametrize("key", ["password", "passphrase", "mnemonic"])
@pytest.mark.reliability(24)
def test_a_password_value_is_refused(tmp_path: Path, key: str) -> None:
    with pytest.raises(InputError, match="password_file or password_command") as caught:
        load_config(write(tmp_path, f'{key} = "hunter2-canary"\n'))
    assert "hunter2-canary" not in caught.value.message


def test_an_endpoint_with_a_user_and_password_is_refused(tmp_path: Path) -> None:
    text = '[s3]\nbucket = "b"\nendpoint = "https://AKIA:topsecret@s3.example.net"\n'
    with pytest.raises(InputError, match="AWS chain") as caught:
        load_config(write(tmp_path, text))
    assert "topsecret" not in caught.value.message


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("bukket = 1\n", "unknown key bukket"),
        ("[s3]\nbukket = 'x'\n", "unknown key s3.bukket"),
        ("[schedule]\nfull = '0 0 * *'\n", "schedule.full"),
        ("timezone = 'Mars/Olympus'\n", "unknown time zone"),
        ("[retention.incremental]\nkeep_within = '30 days'\n", "invalid duration"),
        ("[retention.full]\nkeep_weekly = -1\n", "must not be negative"),
        ("[retention.full]\nkeep_weekly = 'many'\n", "must be a int"),
        ("[retention]\nkeep_daily = 7\n", "unknown key retention.keep_daily"),
        ("password_file = 'a'\npassword_command = 'b'\n", "not both"),
        ("destinations = ['s3']\n", "no bucket"),
        ("destinations = ['/a', '/a']\n", "listed twice"),
        ("[s3]\nchecksum = 'always'\n", "checksum"),
        ("[s3]\nendpoint = 'ftp://x'\n", "http"),
        ("timezone = 3\n", "must be a str"),
        ("this is = not toml [\n", "not valid TOML"),
    ],
)
def test_invalid_configs_name_the_problem(
    tmp_path: Path, text: str, match: str
) -> None:
    with pytest.raises(InputError, match=match):
        load_config(write(tmp_path, text))


def test_missing_file_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="does not exist"):
        load_config(tmp_path / "nope.toml")


@pytest.mark.reliability(24)
def test_masked_is_json_and_hides_url_credentials() -> None:
    config = Config(
        password_command="pass show vaultstore",
        destinations=(
            Destination("/srv/repo"),
            Destination(
                "s3://b/p",
                endpoint="https://user:topsecret@s3.example.net/?X-Amz-Signature=abc",
            ),
        ),
    )
    shown = masked(config)
    text = json.dumps(shown)
    assert "topsecret" not in text and "X-Amz-Signature=abc" not in text
    assert shown["destinations"][0]["role"] == "primary"
    assert shown["destinations"][1]["endpoint"] == "https://***@s3.example.net/?***"
    assert "AWS chain" in shown["destinations"][1]["credentials"]
    assert shown["password_source"].startswith("command")
    assert shown["password_command"] == "pass ***"
    assert shown["retention"]["full"] == {"keep_weekly": 52}
    assert shown["retention"]["incremental"] == {"keep_within": "30d"}


def test_mask_url_leaves_plain_locations_alone() -> None:
    assert mask_url("/srv/repo") == "/srv/repo"
    assert mask_url("s3://bucket/prefix") == "s3://bucket/prefix"
    assert mask_url("https://h.example/x") == "https://h.example/x"


def test_within_duration_from_config_applies(tmp_path: Path) -> None:
    config = load_config(
        write(tmp_path, "[retention.incremental]\nkeep_within = '2w'\n")
    )
    within = config.retention.incremental.within
    assert within is not None
    assert within == Duration(days=14)
    assert timedelta(days=within.days) == timedelta(weeks=2)
