"""The TOML configuration file: destinations, password source, schedules, retention.

Read with ``tomllib``; every key is optional and unknown keys are refused (a
typo must not silently fall back to a default). Layout, with the defaults::

    vault = "/var/lib/vaultstore/vault"   # else --vault / VAULTSTORE_VAULT
    timezone = "UTC"                      # IANA name; schedules and retention days
    password_file = "/etc/vaultstore/password"      # or:
    # password_command = "pass show vaultstore"     # one of the two, or neither
    destinations = ["local", "s3"]        # primary first; default: local, then s3

    [local]
    path = "/var/backups/vaultstore"      # relative paths: from this file's directory

    [s3]
    bucket = "wallet-backups"
    prefix = "prod"
    region = "eu-central-1"
    endpoint = "https://s3.example.net"   # S3-compatible services
    checksum = "when_required"            # or "when_supported" (boto3's CRC32 headers)

    [schedule]
    full = "0 0 * * 0"                    # weekly, Sunday 00:00
    incremental = "0 0 * * *"             # daily, 00:00

    [retention.full]                      # a table replaces that type's defaults
    keep_weekly = 52
    [retention.incremental]
    keep_within = "30d"

A ``destinations`` entry is ``"local"``, ``"s3"`` (the tables above), a path,
an ``s3://bucket/prefix`` URL (using the ``[s3]`` region, endpoint, checksum),
or an inline table ``{url = "...", region = "...", endpoint = "...",
checksum = "..."}``.

Secrets never live here. S3 credentials come from the standard AWS chain
(environment, shared credentials file, instance or task role); a key that
looks like a credential (``aws_secret_access_key``, ``secret_key``,
``session_token`` ...) or a password value (``password``, ``mnemonic``) is
refused, and so is an endpoint URL with a user or password in it.
"""

from __future__ import annotations

import logging
import tomllib
import urllib.parse
from dataclasses import dataclass, field
from datetime import tzinfo
from pathlib import Path
from typing import Any

from vaultstore.errors import InputError, NotFoundError
from vaultstore.retention import DEFAULT_POLICY, KeepRules, Policy, parse_duration
from vaultstore.schedule import Job, load_timezone, validate_cron
from vaultstore.store.open import StoreOptions

log = logging.getLogger(__name__)

DEFAULT_FULL_SCHEDULE = "0 0 * * 0"
DEFAULT_INCREMENTAL_SCHEDULE = "0 0 * * *"
DEFAULT_TIMEZONE = "UTC"
CHECKSUM_MODES = ("when_required", "when_supported")

_CREDENTIAL_KEYS = frozenset(
    {
        "aws_access_key_id",
        "aws_secret_access_key",
        "aws_session_token",
        "access_key",
        "access_key_id",
        "secret_key",
        "secret_access_key",
        "session_token",
        "security_token",
        "credentials",
        "token",
        "api_key",
    }
)
_PASSWORD_KEYS = frozenset(
    {"password", "passphrase", "passwd", "pass", "mnemonic", "seed", "master_key"}
)
_TOP_KEYS = frozenset(
    {
        "vault",
        "timezone",
        "password_file",
        "password_command",
        "destinations",
        "local",
        "s3",
        "schedule",
        "retention",
    }
)
_S3_KEYS = frozenset({"bucket", "prefix", "region", "endpoint", "checksum"})
_RULE_KEYS = frozenset(
    {
        "keep_last",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
        "keep_within",
    }
)


@dataclass(frozen=True)
class Destination:
    """One repository location and how to reach it."""

    url: str
    region: str | None = None
    endpoint: str | None = None
    checksum: str = "when_required"

    @property
    def kind(self) -> str:
        """``s3`` or ``local``."""
        return "s3" if self.url.startswith("s3://") else "local"

    def store_options(self) -> StoreOptions:
        """Options for :func:`vaultstore.store.open.open_store`."""
        return StoreOptions(
            endpoint_url=self.endpoint,
            region=self.region,
            checksum=self.checksum,  # type: ignore[arg-type]
        )


@dataclass(frozen=True)
class Config:
    """Effective settings; every field has the documented default."""

    source: Path | None = None
    vault: Path | None = None
    timezone: str = DEFAULT_TIMEZONE
    password_file: Path | None = None
    password_command: str | None = None
    local_path: Path | None = None
    s3_bucket: str | None = None
    s3_prefix: str = ""
    s3_region: str | None = None
    s3_endpoint: str | None = None
    s3_checksum: str = "when_required"
    destinations: tuple[Destination, ...] = ()
    full_schedule: str = DEFAULT_FULL_SCHEDULE
    incremental_schedule: str = DEFAULT_INCREMENTAL_SCHEDULE
    retention: Policy = field(default_factory=lambda: DEFAULT_POLICY)

    @property
    def primary(self) -> Destination | None:
        """The destination that must succeed, if any is configured."""
        return self.destinations[0] if self.destinations else None

    @property
    def secondaries(self) -> tuple[Destination, ...]:
        """Destinations whose failure never fails a backup."""
        return self.destinations[1:]

    def tz(self) -> tzinfo:
        """The configured time zone."""
        return load_timezone(self.timezone)

    def jobs(self) -> list[Job]:
        """The full and incremental schedules as daemon jobs."""
        return [
            Job("full", self.full_schedule),
            Job("incremental", self.incremental_schedule),
        ]


def load_config(path: Path | None) -> Config:
    """Read and validate a config file; ``None`` gives the defaults.

    Raises:
        NotFoundError: the file does not exist.
        InputError: not TOML, an unknown key, a wrong type, a credential or
            password in the file, an invalid cron line, zone or duration.
    """
    if path is None:
        return Config()
    try:
        raw = path.read_bytes()
    except FileNotFoundError as exc:
        raise NotFoundError(f"config file {path} does not exist") from exc
    except OSError as exc:
        raise InputError(f"cannot read config file {path}: {exc.strerror}") from exc
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"config file {path} is not valid TOML: {exc}") from exc
    return parse_config(data, source=path)


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    """Build a :class:`Config` from parsed TOML (see :func:`load_config`)."""
    where = str(source) if source is not None else "config"
    _refuse_secrets(data, where, "")
    _only_keys(data, _TOP_KEYS, where, "")
    base = source.parent if source is not None else Path.cwd()

    timezone_name = _get(data, "timezone", str, where) or DEFAULT_TIMEZONE
    tz = load_timezone(timezone_name)
    password_file = _get(data, "password_file", str, where)
    password_command = _get(data, "password_command", str, where)
    if password_file and password_command:
        raise InputError(f"{where}: set password_file or password_command, not both")

    local = _table(data, "local", where)
    _only_keys(local, frozenset({"path"}), where, "local.")
    local_path = _get(local, "path", str, where, "local.")
    s3 = _table(data, "s3", where)
    _only_keys(s3, _S3_KEYS, where, "s3.")
    s3_settings = _s3_settings(s3, where)

    schedule = _table(data, "schedule", where)
    _only_keys(schedule, frozenset({"full", "incremental"}), where, "schedule.")
    full = _get(schedule, "full", str, where, "schedule.") or DEFAULT_FULL_SCHEDULE
    incr = _get(schedule, "incremental", str, where, "schedule.")
    incr = incr or DEFAULT_INCREMENTAL_SCHEDULE
    validate_cron(full, f"{where}: schedule.full")
    validate_cron(incr, f"{where}: schedule.incremental")

    vault = _get(data, "vault", str, where)
    local_resolved = _resolve(base, local_path)
    return Config(
        source=source,
        vault=_resolve(base, vault),
        timezone=timezone_name,
        password_file=_resolve(base, password_file),
        password_command=password_command,
        local_path=local_resolved,
        s3_bucket=s3_settings["bucket"],
        s3_prefix=s3_settings["prefix"] or "",
        s3_region=s3_settings["region"],
        s3_endpoint=s3_settings["endpoint"],
        s3_checksum=s3_settings["checksum"] or "when_required",
        destinations=_destinations(data, local_resolved, s3_settings, base, where),
        full_schedule=full,
        incremental_schedule=incr,
        retention=_retention(_table(data, "retention", where), tz, where),
    )


def _resolve(base: Path, value: str | None) -> Path | None:
    if value is None:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def _refuse_secrets(table: dict[str, Any], where: str, prefix: str) -> None:
    for key, value in table.items():
        norm = key.lower().replace("-", "_")
        if (
            norm in _CREDENTIAL_KEYS
            or "secret" in norm
            or norm.endswith(("_token", "access_key"))
        ):
            raise InputError(
                f"{where}: key {prefix}{key} looks like a credential; S3 credentials "
                "come from the standard AWS chain (environment, ~/.aws/credentials, "
                "instance or task role) and must not be in the config file",
                key=prefix + key,
            )
        if norm in _PASSWORD_KEYS:
            raise InputError(
                f"{where}: key {prefix}{key} would hold a secret; give a "
                "password_file or password_command instead, never the value",
                key=prefix + key,
            )
        if isinstance(value, dict):
            _refuse_secrets(value, where, f"{prefix}{key}.")
        elif isinstance(value, list):
            for item in value:
                if isinstance(item, dict):
                    _refuse_secrets(item, where, f"{prefix}{key}[].")


def _only_keys(
    table: dict[str, Any], allowed: frozenset[str], where: str, prefix: str
) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise InputError(
            f"{where}: unknown key {prefix}{unknown[0]} "
            f"(allowed here: {', '.join(sorted(allowed))})",
            key=prefix + unknown[0],
        )


def _get(
    table: dict[str, Any], key: str, kind: type, where: str, prefix: str = ""
) -> Any:
    value = table.get(key)
    if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
        raise InputError(
            f"{where}: {prefix}{key} must be a {kind.__name__}, "
            f"not {type(value).__name__}",
            key=prefix + key,
        )
    return value


def _table(table: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = _get(table, key, dict, where)
    return value if value is not None else {}


def _s3_settings(s3: dict[str, Any], where: str) -> dict[str, Any]:
    found = {key: _get(s3, key, str, where, "s3.") for key in sorted(_S3_KEYS)}
    if found["checksum"] is not None and found["checksum"] not in CHECKSUM_MODES:
        raise InputError(
            f"{where}: s3.checksum must be one of {', '.join(CHECKSUM_MODES)}"
        )
    if found["endpoint"] is not None:
        _check_endpoint(found["endpoint"], where, "s3.endpoint")
    if found["bucket"] is not None and ("/" in found["bucket"] or not found["bucket"]):
        raise InputError(f"{where}: s3.bucket must be a bucket name, without '/'")
    return found


def _check_endpoint(url: str, where: str, key: str) -> None:
    parsed = urllib.parse.urlsplit(url)
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise InputError(f"{where}: {key} must be an http(s) URL")
    if parsed.username or parsed.password:
        raise InputError(
            f"{where}: {key} carries a user or password; credentials come from the "
            "standard AWS chain, never from the config file",
            key=key,
        )


def _destinations(
    data: dict[str, Any],
    local_path: Path | None,
    s3: dict[str, Any],
    base: Path,
    where: str,
) -> tuple[Destination, ...]:
    s3_url = None
    if s3["bucket"]:
        prefix = (s3["prefix"] or "").strip("/")
        s3_url = f"s3://{s3['bucket']}/{prefix}" if prefix else f"s3://{s3['bucket']}"
    shared = {
        "region": s3["region"],
        "endpoint": s3["endpoint"],
        "checksum": s3["checksum"] or "when_required",
    }
    entries = data.get("destinations")
    if entries is None:
        entries = [
            name for name, present in (("local", local_path), ("s3", s3_url)) if present
        ]
    if not isinstance(entries, list):
        raise InputError(f"{where}: destinations must be a list")

    found: list[Destination] = []
    for entry in entries:
        dest = _destination(entry, local_path, s3_url, shared, base, where)
        if any(d.url == dest.url for d in found):
            raise InputError(f"{where}: destination {dest.url} is listed twice")
        found.append(dest)
    return tuple(found)


def _destination(
    entry: Any,
    local_path: Path | None,
    s3_url: str | None,
    shared: dict[str, Any],
    base: Path,
    where: str,
) -> Destination:
    if entry == "local":
        if local_path is None:
            raise InputError(
                f"{where}: destinations names 'local' but [local] has no path"
            )
        return Destination(str(local_path))
    if entry == "s3":
        if s3_url is None:
            raise InputError(f"{where}: destinations names 's3' but [s3] has no bucket")
        return Destination(s3_url, **shared)
    if isinstance(entry, str) and entry:
        return _url_destination(entry, shared, base)
    if isinstance(entry, dict):
        _only_keys(
            entry,
            frozenset({"url", "region", "endpoint", "checksum"}),
            where,
            "destinations[].",
        )
        url = _get(entry, "url", str, where, "destinations[].")
        if not url:
            raise InputError(f"{where}: a destinations table needs a url")
        options = {**shared}
        for key in ("region", "endpoint", "checksum"):
            value = _get(entry, key, str, where, "destinations[].")
            if value is not None:
                options[key] = value
        if options["endpoint"] is not None:
            _check_endpoint(options["endpoint"], where, "destinations[].endpoint")
        if options["checksum"] not in CHECKSUM_MODES:
            raise InputError(
                f"{where}: checksum must be one of {', '.join(CHECKSUM_MODES)}"
            )
        return _url_destination(url, options, base)
    raise InputError(
        f"{where}: a destination must be 'local', 's3', a path, a URL or a table"
    )


def _url_destination(url: str, options: dict[str, Any], base: Path) -> Destination:
    if url.startswith("s3://"):
        return Destination(url, **options)
    if "://" in url:
        return Destination(url)  # file:// and friends: open_store judges them
    resolved = _resolve(base, url)
    return Destination(str(resolved))


def _retention(table: dict[str, Any], tz: tzinfo, where: str) -> Policy:
    _only_keys(table, frozenset({"full", "incremental"}), where, "retention.")
    full = DEFAULT_POLICY.full
    incremental = DEFAULT_POLICY.incremental
    if "full" in table:
        full = _rules(_table(table, "full", where), where, "retention.full.")
    if "incremental" in table:
        incremental = _rules(
            _table(table, "incremental", where), where, "retention.incremental."
        )
    return Policy(full=full, incremental=incremental, tz=tz)


def _rules(table: dict[str, Any], where: str, prefix: str) -> KeepRules:
    _only_keys(table, _RULE_KEYS, where, prefix)
    counts = {}
    for key in (
        "keep_last",
        "keep_daily",
        "keep_weekly",
        "keep_monthly",
        "keep_yearly",
    ):
        value = _get(table, key, int, where, prefix)
        if value is not None and value < 0:
            raise InputError(f"{where}: {prefix}{key} must not be negative")
        counts[key.removeprefix("keep_")] = value or 0
    within = _get(table, "keep_within", str, where, prefix)
    return KeepRules(**counts, within=parse_duration(within) if within else None)


# -- display -------------------------------------------------------------------


def mask_url(url: str) -> str:
    """A URL with any user, password and query string replaced by ``***``."""
    parsed = urllib.parse.urlsplit(url)
    if not parsed.scheme or not parsed.netloc:
        return url
    netloc = parsed.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = "***" if parsed.query else ""
    return urllib.parse.urlunsplit((parsed.scheme, netloc, parsed.path, query, ""))


def mask_command(command: str) -> str:
    """The program of a password command; its arguments may hold a secret."""
    words = command.split()
    if not words:
        return ""
    return words[0] + (" ***" if len(words) > 1 else "")


def masked(config: Config) -> dict[str, Any]:
    """Effective settings as a JSON-ready dict, with secrets masked."""

    def dest(d: Destination, role: str) -> dict[str, Any]:
        shown: dict[str, Any] = {"role": role, "url": mask_url(d.url), "kind": d.kind}
        if d.kind == "s3":
            shown.update(
                region=d.region,
                endpoint=mask_url(d.endpoint) if d.endpoint else None,
                checksum=d.checksum,
                credentials="standard AWS chain (never the config file)",
            )
        return shown

    password = "prompt or VAULTSTORE_PASSWORD"
    if config.password_file is not None:
        password = f"file {config.password_file}"
    elif config.password_command:
        password = "command (output never shown)"
    command = mask_command(config.password_command) if config.password_command else None
    return {
        "config_file": str(config.source) if config.source else None,
        "vault": str(config.vault) if config.vault else None,
        "timezone": config.timezone,
        "password_source": password,
        "password_command": command,
        "destinations": [
            dest(d, "primary" if i == 0 else "secondary")
            for i, d in enumerate(config.destinations)
        ],
        "schedule": {
            "full": config.full_schedule,
            "incremental": config.incremental_schedule,
        },
        "retention": {
            "full": config.retention.full.describe(),
            "incremental": config.retention.incremental.describe(),
        },
    }
