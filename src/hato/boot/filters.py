"""Composition of the content filters: `[[milter]]` into each role's milters; `[rspamd]`
settings into the `SpamFilter` each listener role gets, with one rspamd client (one HTTP
connection pool) per rspamd, kept across reloads and closed at shutdown."""

from __future__ import annotations

from hato.config import Settings
from hato.config.filter_sections import RspamdSettings
from hato.filters import RspamdAction, RspamdClient
from hato.intake.miltercheck import DefaultAction, MilterFilter
from hato.intake.miltermetrics import UNCOUNTED, MilterMetrics
from hato.intake.spamcheck import OnFailure, Response, SpamFilter, SpamMetrics, Uncounted
from hato.milter import MilterClient, Timeouts
from hato.model import Role


def rspamd_client(section: RspamdSettings) -> RspamdClient:
    return RspamdClient(
        section.url,
        timeout=section.timeout,
        controller_url=section.controller_url,
        password=section.password,
    )


def responses(section: RspamdSettings) -> dict[RspamdAction, Response]:
    """[rspamd]'s mapping of rspamd's actions to ours ("no action" is always the inbox)."""
    return {
        RspamdAction.NO_ACTION: Response.INBOX,
        RspamdAction.REJECT: Response(section.reject.value),
        RspamdAction.SOFT_REJECT: Response(section.soft_reject.value),
        RspamdAction.GREYLIST: Response(section.greylist.value),
        RspamdAction.REWRITE_SUBJECT: Response(section.rewrite_subject.value),
        RspamdAction.ADD_HEADER: Response(section.add_header.value),
    }


class SpamFilters:
    """The rspamd clients of the process, one per (url, timeout, controller, password)."""

    def __init__(
        self, metrics: SpamMetrics | None = None, milter_metrics: MilterMetrics = UNCOUNTED
    ) -> None:
        self._metrics = metrics or Uncounted()
        self.milter_metrics = milter_metrics  # for milters_for_role
        self._clients: dict[tuple[str, float, str, str | None], RspamdClient] = {}

    def for_role(self, settings: Settings, role: Role) -> SpamFilter | None:
        """The check of a listener with `role`, or None when [rspamd] leaves it out."""
        section = settings.rspamd
        if section is None or role not in section.roles:
            return None
        key = (section.url, section.timeout, section.controller_url, section.password)
        client = self._clients.get(key)
        if client is None:
            client = self._clients[key] = rspamd_client(section)
        return SpamFilter(
            client=client,
            on_failure=OnFailure(section.on_failure.value),
            responses=responses(section),
            max_size=section.max_size,
            metrics=self._metrics,
            trust_our_checks=section.trust_our_checks,
        )

    async def aclose(self) -> None:
        for client in self._clients.values():
            await client.aclose()
        self._clients.clear()


def milters_for_role(
    settings: Settings, role: Role, metrics: MilterMetrics = UNCOUNTED
) -> tuple[MilterFilter, ...]:
    """The [[milter]] list a listener with `role` asks, in order (a client per message
    connection: nothing to keep across reloads), counting into `metrics`."""
    return tuple(
        MilterFilter(
            client=MilterClient(
                m.address, Timeouts(m.connect_timeout, m.command_timeout, m.eom_timeout)
            ),
            roles=m.roles,
            default_action=DefaultAction(m.default_action.value),
            metrics=metrics,
        )
        for m in settings.milters
        if role in m.roles
    )
