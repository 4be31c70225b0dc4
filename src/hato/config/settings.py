"""The validated configuration: one frozen `Settings` holding one section object per table.

Must not import anything of hato but model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hato.config.authcheck_sections import AuthcheckSettings
from hato.config.directory_sections import DomainSettings, LocalSettings
from hato.config.doctor_sections import DoctorSettings
from hato.config.filter_sections import MilterSettings, RspamdSettings
from hato.config.ops_sections import MetricsSettings, WkdSettings
from hato.config.outbound_sections import DeliverySettings, SmarthostSettings, TransportSettings
from hato.config.policy_sections import AuthSettings, DnsSettings, NetworkSettings
from hato.config.reports_sections import ReportsSettings
from hato.config.screen_sections import ScreenSettings
from hato.config.sections import (
    LimitsSettings,
    ListenerSettings,
    QueueSettings,
    ServerSettings,
    TlsSettings,
)
from hato.config.store_sections import StoreSettings
from hato.config.values import domain_key
from hato.model import AddressError


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything hato.toml says, validated; sizes in octets, paths absolute."""

    server: ServerSettings
    listeners: tuple[ListenerSettings, ...]
    tls: TlsSettings | None
    limits: LimitsSettings
    queue: QueueSettings
    local: LocalSettings
    domains: tuple[DomainSettings, ...]
    auth: AuthSettings
    networks: tuple[NetworkSettings, ...]
    dns: DnsSettings
    authcheck: AuthcheckSettings
    delivery: DeliverySettings = field(default_factory=lambda: DeliverySettings.model_validate({}))
    transports: tuple[TransportSettings, ...] = ()
    smarthost: SmarthostSettings | None = None
    metrics: MetricsSettings = field(default_factory=lambda: MetricsSettings.model_validate({}))
    wkd: WkdSettings = field(default_factory=lambda: WkdSettings.model_validate({}))
    rspamd: RspamdSettings | None = None  # no [rspamd]: no check
    screen: ScreenSettings = field(default_factory=lambda: ScreenSettings.model_validate({}))
    milters: tuple[MilterSettings, ...] = ()  # [[milter]], asked in this order
    doctor: DoctorSettings = field(default_factory=lambda: DoctorSettings.model_validate({}))
    reports: ReportsSettings = field(default_factory=lambda: ReportsSettings.model_validate({}))
    store: StoreSettings = field(default_factory=lambda: StoreSettings.model_validate({}))
    # Where server.data_dir came from: "server.data_dir", "$HATO_HOME" or the default (for
    # messages that say which data directory a command used, and how to choose another).
    data_dir_origin: str = "server.data_dir"

    def network(self, name: str) -> NetworkSettings | None:
        """The [[network]] called `name`."""
        return next((n for n in self.networks if n.name == name), None)

    def domain(self, name: str) -> DomainSettings | None:
        """The [[domain]] called `name` (any case, U-label or A-label form), if it is local."""
        try:
            key = domain_key(name)
        except AddressError:
            return None
        return next((d for d in self.domains if domain_key(d.name) == key), None)

    def is_local_domain(self, name: str) -> bool:
        return self.domain(name) is not None

    def lmtp_for(self, name: str) -> str | None:
        """The LMTP server ("HOST:PORT") of the [[transport]] lmtp for the domain `name` (any
        case or form), if it has one: for a [[domain]], where its mailboxes are."""
        try:
            key = domain_key(name)
        except AddressError:
            return None
        return next((t.lmtp for t in self.transports if domain_key(t.domain) == key), None)

    @property
    def mailboxes(self) -> Path:
        """The root of the Maildirs: [local] mailboxes, else DATA_DIR/mailboxes."""
        return self.local.mailboxes or Path(self.server.data_dir) / "mailboxes"


@dataclass(frozen=True, slots=True)
class LoadedSettings:
    """Settings and where they came from (a file path, or the embedded default), for humans."""

    settings: Settings
    source: str
