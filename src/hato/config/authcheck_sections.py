"""[authcheck] of hato.toml: judging inbound mail (SPF, DKIM, DMARC, ARC) and signing ours.

Same rules as sections.py: every field has a `description`; validators raise ValueError naming
the fix; the loader adds the key path.

Must not import anything of hato but model.
"""

from __future__ import annotations

import enum
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, PlainValidator, StrictBool

from hato.config.values import IPNetwork, parse_cidr, parse_domain_name, parse_seconds

_SECTION = ConfigDict(frozen=True, extra="forbid")
Seconds = Annotated[float, PlainValidator(parse_seconds)]


class DmarcEnforcement(enum.StrEnum):
    POLICY = "policy"  # follow the sender domain's p=: reject -> 550 5.7.1, quarantine -> Junk
    QUARANTINE = "quarantine"  # never refuse: what the policy would reject goes to Junk
    REPORT = "report"  # only say so in Authentication-Results


class OwnDomainsEnforcement(enum.StrEnum):
    REJECT = "reject"  # a From in our domains must pass aligned SPF or DKIM: else 550 5.7.1
    QUARANTINE = "quarantine"  # else into the recipients' Junk folder
    DMARC = "dmarc"  # only what the domain's own DMARC record says


class DisplayNamesEnforcement(enum.StrEnum):
    QUARANTINE = "quarantine"  # a From display name reading as our address: to Junk
    REJECT = "reject"  # 550 5.7.1
    ACCEPT = "accept"  # not judged


class AuthcheckSettings(BaseModel):
    """[authcheck]."""

    model_config = _SECTION

    inbound: StrictBool = Field(
        True,
        description="true or false: check SPF, DKIM, ARC and DMARC of mail received on mx "
        "listeners and add Authentication-Results",
    )
    authserv_id: Annotated[str, PlainValidator(parse_domain_name)] | None = Field(
        None, description="the authserv-id of our Authentication-Results (default: hostname)"
    )
    dmarc: DmarcEnforcement = Field(
        DmarcEnforcement.POLICY, description='"policy", "quarantine" or "report"'
    )
    own_domains: OwnDomainsEnforcement = Field(
        OwnDomainsEnforcement.REJECT,
        description='"reject", "quarantine" or "dmarc": what mx does with a message whose From '
        "is in one of our domains and passes neither aligned SPF nor aligned DKIM",
    )
    own_domains_relays: tuple[Annotated[IPNetwork, PlainValidator(parse_cidr)], ...] = Field(
        (),
        description="an array of CIDRs of relays trusted with our domains on mx (a gateway in "
        'front, our other servers), e.g. ["198.51.100.7/32"]',
    )
    own_domains_arc_sealers: tuple[Annotated[str, PlainValidator(parse_domain_name)], ...] = Field(
        (),
        description="an array of domains whose valid ARC seal vouches for a forwarded "
        'message from our domains (a mailing list), e.g. ["lists.example.net"]',
    )
    own_domains_display_names: DisplayNamesEnforcement = Field(
        DisplayNamesEnforcement.QUARANTINE,
        description='"quarantine", "reject" or "accept": what mx does with a message whose '
        "From display name or comment reads as an address in our domains while its address "
        "is a stranger's",
    )
    budget: Seconds = Field(
        20.0, description="seconds all checks of one message may take (then temperror)"
    )
    sign: StrictBool = Field(
        True,
        description="true or false: DKIM-sign authenticated mail of domains that have a key "
        "(hato dkim keygen)",
    )
