"""Finding, reading and validating hato.toml, and the embedded default.

Which configuration is used (an interface other tools rely on): the file given with
``--config``; else ``./hato.toml`` if it exists; else the embedded default (domain ``localhost``
accepting any local part, an MX listener on 127.0.0.1:2525, submission on 127.0.0.1:2587 and
127.0.0.1:2465 with a self-signed certificate). Relative paths in a file are
relative to the file's directory. Every section is validated on its own, and every
[[listener]] and [[domain]] too, so that one bad value does not hide the problems after it:
a ConfigError lists them all.

Must not import anything of hato but model.
"""

from __future__ import annotations

import os
import socket
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from hato.config.authcheck_sections import AuthcheckSettings
from hato.config.directory_sections import DomainSettings, LocalSettings
from hato.config.doctor_sections import DoctorSettings
from hato.config.errors import ConfigError, translate
from hato.config.fields import ParseContext
from hato.config.filter_sections import MilterSettings, RspamdSettings
from hato.config.ops_sections import MetricsSettings, WkdSettings, metrics_clashes
from hato.config.outbound_sections import DeliverySettings, SmarthostSettings, TransportSettings
from hato.config.policy_sections import AuthSettings, DnsSettings, NetworkSettings
from hato.config.reports_sections import ReportsSettings
from hato.config.screen_sections import ScreenSettings
from hato.config.sections import (
    SECTIONS,
    LimitsSettings,
    ListenerSettings,
    QueueSettings,
    ServerSettings,
    TlsSettings,
)
from hato.config.settings import LoadedSettings, Settings
from hato.config.store_sections import StoreSettings
from hato.config.values import (
    domain_key,
    parse_domain_name,
    parse_listen_address,
    resolve_path,
    show,
)
from hato.model import Role

M = TypeVar("M", bound=BaseModel)

CONFIG_FILE_NAME = "hato.toml"
EMBEDDED_SOURCE = "embedded default (no --config, no ./hato.toml)"
EMBEDDED_DEFAULT: Mapping[str, Any] = {
    "server": {"hostname": "localhost"},
    "listener": [
        {"role": "mx", "address": "127.0.0.1:2525"},
        # Submission with a self-signed certificate (made in DATA_DIR/tls on first start), so a
        # newcomer can try STARTTLS and AUTH too (users: `hato user add ADDRESS`).
        {"role": "submission", "address": "127.0.0.1:2587"},
        {"role": "submissions", "address": "127.0.0.1:2465"},
    ],
    "domain": [{"name": "localhost", "accept_any": True}],
}
_EXAMPLES = {
    "listener": 'role = "mx" and address = "0.0.0.0:25"',
    "domain": 'name = "example.org"',
}
_TLS_ROLES = (Role.SUBMISSION.value, Role.SUBMISSIONS.value)


def load_settings(
    path: Path | None,
    *,
    env: Mapping[str, str],
    cwd: Path,
    fqdn: Callable[[], str] = socket.getfqdn,
    check_access: bool = True,
) -> LoadedSettings:
    """The settings from `path` (``--config``), else ./hato.toml, else the embedded default.

    `env` gives HATO_HOME (the default data_dir), `cwd` the directory relative names start
    from, `fqdn` the default server.hostname of a file that names none; `check_access` False:
    named files must exist, but this process need not be able to read them (a reload after
    the privilege drop). Raises ConfigError.
    """
    if path is not None:
        file = Path(os.path.normpath(cwd / path))
        if not file.exists():
            raise ConfigError(str(file), ["file does not exist (given with --config)"])
    elif (cwd / CONFIG_FILE_NAME).is_file():
        file = cwd / CONFIG_FILE_NAME
    else:
        settings = settings_from_mapping(
            EMBEDDED_DEFAULT, base_dir=cwd, env=env, cwd=cwd, source=EMBEDDED_SOURCE, fqdn=fqdn
        )
        return LoadedSettings(settings, EMBEDDED_SOURCE)
    source = str(file)
    raw = _read_toml(file, source)
    settings = settings_from_mapping(
        raw,
        base_dir=file.parent,
        env=env,
        cwd=cwd,
        source=source,
        fqdn=fqdn,
        check_access=check_access,
    )
    return LoadedSettings(settings, source)


def data_dir_despite_errors(path: Path | None, *, env: Mapping[str, str], cwd: Path) -> Path | None:
    """The data directory a file names (or the default it leaves), read as leniently as
    possible: for `hato reload` of a file with errors elsewhere, whose running server must
    still be asked (it keeps the configuration in force, and logs why it refused). None when
    even that cannot be read (no such file, not TOML, a data_dir that is not a path)."""
    file = Path(os.path.normpath(cwd / path)) if path is not None else cwd / CONFIG_FILE_NAME
    try:
        raw = _read_toml(file, str(file))
    except ConfigError:
        return None
    server = raw.get("server", {})
    if not isinstance(server, dict):
        return None
    if "data_dir" not in server:
        return default_data_dir(env, cwd)
    try:
        return resolve_path(server["data_dir"], file.parent)
    except ValueError:
        return None


def parse_settings(
    text: str,
    *,
    base_dir: Path,
    env: Mapping[str, str],
    cwd: Path,
    source: str = "<string>",
    fqdn: Callable[[], str] = socket.getfqdn,
) -> Settings:
    """Settings from TOML text, as if it were a file in `base_dir`. Raises ConfigError."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None
    return settings_from_mapping(raw, base_dir=base_dir, env=env, cwd=cwd, source=source, fqdn=fqdn)


def default_data_dir(env: Mapping[str, str], cwd: Path) -> Path:
    """$HATO_HOME (relative to `cwd` if relative), else `cwd`/hato-data."""
    home = env.get("HATO_HOME", "")
    relative = Path(home).expanduser() if home else Path("hato-data")
    return Path(os.path.normpath(cwd / relative))


def _read_toml(file: Path, source: str) -> dict[str, Any]:
    try:
        data = file.read_bytes()
    except OSError as exc:
        raise ConfigError(source, [f"cannot read the file: {exc.strerror}"]) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            source, [f"not UTF-8 (byte {exc.start}); TOML files must be UTF-8"]
        ) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message ends with "(at line L, column C)".
        raise ConfigError(source, [f"TOML syntax error: {exc}"]) from None


def settings_from_mapping(
    raw: Mapping[str, Any],
    *,
    base_dir: Path,
    env: Mapping[str, str],
    cwd: Path,
    source: str,
    fqdn: Callable[[], str] = socket.getfqdn,
    check_access: bool = True,
) -> Settings:
    """Validate parsed TOML; raises ConfigError listing every problem."""
    problems: list[str] = []
    context = ParseContext(base_dir, check_access)
    for key in raw:
        if key not in SECTIONS:
            problems.append(f"{key}: unknown key (valid keys: {', '.join(SECTIONS)})")

    server_raw = raw.get("server", {})
    origin = data_dir_origin(raw, env)
    if isinstance(server_raw, dict):
        server_raw = {"data_dir": default_data_dir(env, cwd), **server_raw}
        if "hostname" not in server_raw:
            server_raw["hostname"] = _default_hostname(fqdn, problems)
    server = _one(ServerSettings, server_raw, "server", context, problems)
    listeners = _many(ListenerSettings, raw.get("listener"), "listener", context, problems)
    tls = _one(TlsSettings, raw["tls"], "tls", context, problems) if "tls" in raw else None
    limits = _one(LimitsSettings, raw.get("limits", {}), "limits", context, problems)
    queue = _one(QueueSettings, raw.get("queue", {}), "queue", context, problems)
    local = _one(LocalSettings, raw.get("local", {}), "local", context, problems)
    domains = _many(DomainSettings, raw.get("domain"), "domain", context, problems)
    auth = _one(AuthSettings, raw.get("auth", {}), "auth", context, problems)
    networks = _many(NetworkSettings, raw.get("network", []), "network", context, problems, 0)
    dns = _one(DnsSettings, raw.get("dns", {}), "dns", context, problems)
    authcheck = _one(AuthcheckSettings, raw.get("authcheck", {}), "authcheck", context, problems)
    delivery = _one(DeliverySettings, raw.get("delivery", {}), "delivery", context, problems)
    transports = _many(
        TransportSettings, raw.get("transport", []), "transport", context, problems, 0
    )
    smarthost = (
        _one(SmarthostSettings, raw["smarthost"], "smarthost", context, problems)
        if "smarthost" in raw
        else None
    )
    metrics = _one(MetricsSettings, raw.get("metrics", {}), "metrics", context, problems)
    wkd = _one(WkdSettings, raw.get("wkd", {}), "wkd", context, problems)
    rspamd = (
        _one(RspamdSettings, raw["rspamd"], "rspamd", context, problems)
        if "rspamd" in raw
        else None
    )
    screen = _one(ScreenSettings, raw.get("screen", {}), "screen", context, problems)
    milters = _many(MilterSettings, raw.get("milter", []), "milter", context, problems, 0)
    doctor = _one(DoctorSettings, raw.get("doctor", {}), "doctor", context, problems)
    reports = _one(ReportsSettings, raw.get("reports", {}), "reports", context, problems)
    store = _one(StoreSettings, raw.get("store", {}), "store", context, problems)

    if store is not None and delivery is not None:
        problems.extend(_lease_room(store, delivery))
    problems.extend(_duplicates(raw.get("listener"), "listener", "address"))
    problems.extend(_duplicates(raw.get("domain"), "domain", "name"))
    problems.extend(_duplicates(raw.get("network"), "network", "name"))
    problems.extend(_duplicates(raw.get("transport"), "transport", "domain"))
    problems.extend(_smarthost_references(raw.get("transport"), "smarthost" in raw))
    problems.extend(_local_routes(domains, transports))
    problems.extend(_network_references(raw.get("listener"), raw.get("network")))
    problems.extend(metrics_clashes(raw.get("listener"), raw.get("metrics")))
    if "tls" not in raw and source != EMBEDDED_SOURCE:
        # The embedded default is the one place a self-signed certificate is made instead.
        problems.extend(_tls_required(raw.get("listener")))
    if problems or server is None or limits is None or queue is None or local is None:
        raise ConfigError(source, problems)
    if (
        auth is None
        or dns is None
        or authcheck is None
        or delivery is None
        or metrics is None
        or wkd is None
        or screen is None
        or doctor is None
        or reports is None
        or store is None
    ):
        raise ConfigError(source, problems)
    return Settings(
        server=server,
        listeners=tuple(listener for _, listener in listeners),
        tls=tls,
        limits=limits,
        queue=queue,
        local=local,
        domains=tuple(domain for _, domain in domains),
        auth=auth,
        networks=tuple(network for _, network in networks),
        dns=dns,
        authcheck=authcheck,
        delivery=delivery,
        transports=tuple(transport for _, transport in transports),
        smarthost=smarthost,
        metrics=metrics,
        wkd=wkd,
        rspamd=rspamd,
        screen=screen,
        milters=tuple(milter for _, milter in milters),
        doctor=doctor,
        reports=reports,
        store=store,
        data_dir_origin=origin,
    )


def data_dir_origin(raw: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """Where server.data_dir came from, in words for an error message or a hint."""
    server = raw.get("server")
    if isinstance(server, dict) and "data_dir" in server:
        return "server.data_dir"
    if env.get("HATO_HOME"):
        return "$HATO_HOME"
    return "the default ./hato-data (no server.data_dir, no $HATO_HOME)"


def _default_hostname(fqdn: Callable[[], str], problems: list[str]) -> str:
    name = fqdn()
    try:
        return parse_domain_name(name)
    except ValueError:
        problems.append(
            f"server.hostname: not set, and this machine's name {show(name)} is not a domain "
            'name; set hostname = "mail.example.org" (your MX host name)'
        )
        return "localhost"


def _one(
    model: type[M], raw: object, path: str, context: ParseContext, problems: list[str]
) -> M | None:
    try:
        return model.model_validate(raw, context=context)
    except ValidationError as exc:
        problems.extend(translate(exc, path, model))
        return None


def _many(
    model: type[M],
    raw: object,
    path: str,
    context: ParseContext,
    problems: list[str],
    minimum: int = 1,
) -> list[tuple[int, M]]:
    """The valid entries of an array of tables, with their index; problems for the others."""
    if minimum == 0 and raw == []:
        return []
    if raw is None or raw == []:
        problems.append(f"{path}: at least one [[{path}]] is required, e.g. {_EXAMPLES[path]}")
        return []
    if not isinstance(raw, list):
        problems.append(f"{path}: expected an array of tables ([[{path}]]), got {show(raw)}")
        return []
    valid = []
    for index, item in enumerate(raw):
        entry = _one(model, item, f"{path}[{index}]", context, problems)
        if entry is not None:
            valid.append((index, entry))
    return valid


def _entries(raw: object) -> list[tuple[int, dict[str, Any]]]:
    """The tables of an array of tables, with their index (the cross checks read them raw, so
    that an entry with a bad value elsewhere is still checked)."""
    if not isinstance(raw, list):
        return []
    return [(index, item) for index, item in enumerate(raw) if isinstance(item, dict)]


_IDENTITY: dict[str, tuple[Callable[[object], object], str]] = {
    "listener": (parse_listen_address, "is already used by"),
    "domain": (lambda name: domain_key(parse_domain_name(name)), "is already defined by"),
    "network": (lambda name: name if isinstance(name, str) else None, "is already defined by"),
    "transport": (lambda name: domain_key(parse_domain_name(name)), "is already defined by"),
}
_DUPLICATE_FIX = {
    "listener": "give each listener its own HOST:PORT",
    "domain": "merge the two [[domain]] tables",
    "network": "merge the two [[network]] tables or rename one",
    "transport": "merge the two [[transport]] tables",
}


def _duplicates(raw: object, section: str, key: str) -> list[str]:
    """Two [[listener]] on one address, two [[domain]] or [[network]] with one name."""
    identity, verb = _IDENTITY[section]
    problems = []
    seen: dict[object, int] = {}
    for index, item in _entries(raw):
        try:
            value = identity(item.get(key))
        except ValueError:
            continue  # reported by the entry's own validation
        if value is None:
            continue
        if (first := seen.setdefault(value, index)) != index:
            problems.append(
                f"{section}[{index}].{key}: {show(item[key])} {verb} {section}[{first}]; "
                f"{_DUPLICATE_FIX[section]}"
            )
    return problems


def _network_references(listeners: object, networks: object) -> list[str]:
    """Every name in a listener's refuse_networks / allow_networks is a [[network]]."""
    names = {item.get("name") for _, item in _entries(networks)}
    known = ", ".join(sorted(str(n) for n in names if isinstance(n, str))) or "none defined"
    problems = []
    for index, item in _entries(listeners):
        for key in ("refuse_networks", "allow_networks"):
            values = item.get(key, [])
            for position, name in enumerate(values if isinstance(values, list) else []):
                if isinstance(name, str) and name not in names:
                    problems.append(
                        f"listener[{index}].{key}[{position}]: no [[network]] named {show(name)} "
                        f"(defined: {known}); add a [[network]] with that name"
                    )
    return problems


def _smarthost_references(transports: object, has_smarthost: bool) -> list[str]:
    """A [[transport]] with smarthost = true needs a [smarthost]."""
    if has_smarthost:
        return []
    return [
        f"transport[{index}].smarthost: there is no [smarthost]; add one with its host "
        '(e.g. host = "smtp.provider.net") or remove this key'
        for index, item in _entries(transports)
        if item.get("smarthost") is True
    ]


def _local_routes(
    domains: list[tuple[int, DomainSettings]], transports: list[tuple[int, TransportSettings]]
) -> list[str]:
    """A [[domain]]'s mail goes into its mailboxes: Maildirs, or an LMTP server's (its
    [[transport]] lmtp, docs/configuration.md); a relay, smarthost or MX route for it would
    be ignored, so it is refused rather than taken silently."""
    ours = {domain_key(domain.name) for _, domain in domains}
    return [
        f"transport[{index}]: {transport.domain} is a [[domain]], whose mail goes into its "
        'mailboxes (Maildirs, or an LMTP server: lmtp = "HOST:PORT"); remove relay, '
        "smarthost and mx here, or the [[domain]] to send its mail on"
        for index, transport in transports
        if domain_key(transport.domain) in ours
        and (transport.relay is not None or transport.smarthost or transport.mx)
    ]


def _lease_room(store: StoreSettings, delivery: DeliverySettings) -> list[str]:
    """A node must finish an attempt and record it within its lease (else another node takes
    the rows while it still delivers them)."""
    if store.backend != "postgresql" or store.lease_time > delivery.attempt_timeout:
        return []
    return [
        f"store.lease_time: {store.lease_time:g} s must be more than delivery.attempt_timeout "
        f"({delivery.attempt_timeout:g} s): raise lease_time or lower attempt_timeout"
    ]


def _tls_required(raw: object) -> list[str]:
    # RFC 8314 §3.3 (implicit TLS) and RFC 3207 (STARTTLS): submission needs a certificate.
    return [
        f'tls: required by listener[{index}] (role "{item["role"]}"): add [tls] cert and key'
        for index, item in _entries(raw)
        if item.get("role") in _TLS_ROLES
    ]
