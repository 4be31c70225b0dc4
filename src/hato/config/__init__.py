"""Configuration: hato.toml validated into one frozen `Settings`, errors with their key path.

    loaded = load_settings(path_or_None, env=os.environ, cwd=Path.cwd())
    loaded.settings.listeners[0].port, loaded.source

docs/configuration.md is the reference for every key. `boot/` hands each room its own section;
no room below the composition root imports this package.

Must not import anything of hato but model (and pydantic, tomllib).
"""

from hato.config.directory_sections import DomainSettings, LocalSettings
from hato.config.errors import ConfigError
from hato.config.load import (
    CONFIG_FILE_NAME,
    EMBEDDED_DEFAULT,
    EMBEDDED_SOURCE,
    data_dir_despite_errors,
    default_data_dir,
    load_settings,
    parse_settings,
    settings_from_mapping,
)
from hato.config.ops_sections import MetricsSettings
from hato.config.outbound_sections import (
    DeliverySettings,
    SmarthostSettings,
    SmarthostTls,
    TlsPolicyName,
    TransportSettings,
)
from hato.config.policy_sections import AUTH_MECHANISMS, AuthSettings, DnsSettings, NetworkSettings
from hato.config.sections import (
    LimitsSettings,
    ListenerSettings,
    LogFormat,
    LogLevel,
    QueueSettings,
    ServerSettings,
    TlsSettings,
)
from hato.config.settings import LoadedSettings, Settings
from hato.config.values import ListenAddress, parse_size

__all__ = [
    "AUTH_MECHANISMS",
    "CONFIG_FILE_NAME",
    "EMBEDDED_DEFAULT",
    "EMBEDDED_SOURCE",
    "AuthSettings",
    "ConfigError",
    "DeliverySettings",
    "DnsSettings",
    "DomainSettings",
    "LimitsSettings",
    "ListenAddress",
    "ListenerSettings",
    "LoadedSettings",
    "LocalSettings",
    "LogFormat",
    "LogLevel",
    "MetricsSettings",
    "NetworkSettings",
    "QueueSettings",
    "ServerSettings",
    "Settings",
    "SmarthostSettings",
    "SmarthostTls",
    "TlsPolicyName",
    "TlsSettings",
    "TransportSettings",
    "data_dir_despite_errors",
    "default_data_dir",
    "load_settings",
    "parse_settings",
    "parse_size",
    "settings_from_mapping",
]
