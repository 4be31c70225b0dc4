"""The web endpoint's MTA-STS and client-setup answers (server/clientsetup.py, server/web.py):
the policy our own MTA-STS parser accepts, its id, and the routing by Host."""

from __future__ import annotations

import asyncio
import re
import xml.etree.ElementTree as ET
from dataclasses import replace

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from hato.delivery.mtasts import StsMode, parse_policy, parse_sts_record
from hato.server.clientsetup import (
    Publication,
    Published,
    SubmissionPort,
    SubmissionSecurity,
    autoconfig_xml,
    policy_id,
    sts_policy,
    sts_record,
)
from hato.server.web import add_client_setup

PUB = Publication(
    domain="example.org",
    hostname="mail.example.org",
    sts_mode="enforce",
    sts_max_age=604800,
    submission=(
        SubmissionPort(465, SubmissionSecurity.IMPLICIT),
        SubmissionPort(587, SubmissionSecurity.STARTTLS),
    ),
    imap_port=None,
)


@pytest.mark.parametrize("mode", ["enforce", "testing", "none"])
def test_the_policy_is_one_our_parser_accepts(mode: str) -> None:
    pub = replace(PUB, sts_mode=mode)
    policy = parse_policy(sts_policy(pub), parse_sts_record(sts_record(pub)))
    assert policy.mode is StsMode(mode)
    assert policy.mx == ("mail.example.org",) and policy.max_age == 604800
    assert policy.id == policy_id(pub)


def test_the_id_changes_with_the_policy_text_only() -> None:
    # RFC 8461 §3.1: 1 to 32 letters and digits.
    assert re.fullmatch(r"[A-Za-z0-9]{1,32}", policy_id(PUB))
    assert policy_id(PUB) == policy_id(replace(PUB, submission=()))
    assert policy_id(PUB) != policy_id(replace(PUB, sts_mode="testing"))
    assert policy_id(PUB) != policy_id(replace(PUB, sts_max_age=86400))
    assert policy_id(PUB) != policy_id(replace(PUB, hostname="mx2.example.org"))


def test_autoconfig_without_imap_names_only_submission() -> None:
    root = ET.fromstring(autoconfig_xml(PUB))
    assert root.find("emailProvider/incomingServer") is None
    ports = [(s.findtext("port"), s.findtext("socketType")) for s in root.iter("outgoingServer")]
    assert ports == [("465", "SSL"), ("587", "STARTTLS")]


def _app(mta_sts: bool = True, autoconfig: bool = True) -> web.Application:
    app = web.Application()
    published = Published({"example.org": PUB})
    add_client_setup(app, published, mta_sts=mta_sts, autoconfig=autoconfig)
    return app


def _get(app: web.Application, host: str, path: str) -> tuple[int, str]:
    async def run() -> tuple[int, str]:
        async with TestClient(TestServer(app)) as client:
            response = await client.get(path, headers={"Host": host})
            return response.status, response.content_type

    return asyncio.run(run())


@pytest.mark.parametrize(
    ("host", "status"),
    [
        ("mta-sts.example.org", 200),
        ("MTA-STS.Example.ORG:443", 200),
        ("mta-sts.example.org.", 200),
        ("example.org", 404),  # RFC 8461 §3.3: at mta-sts.DOMAIN only
        ("mta-sts.example.net", 404),
        ("autoconfig.example.org", 404),
    ],
)
def test_the_policy_is_served_to_its_host_only(host: str, status: int) -> None:
    assert _get(_app(), host, "/.well-known/mta-sts.txt")[0] == status


def test_parts_turned_off_are_not_served() -> None:
    assert _get(_app(mta_sts=False), "mta-sts.example.org", "/.well-known/mta-sts.txt")[0] == 404
    path = "/mail/config-v1.1.xml?emailaddress=a%40example.org"
    assert _get(_app(autoconfig=False), "autoconfig.example.org", path)[0] == 404
    assert _get(_app(), "autoconfig.example.org", path) == (200, "application/xml")
    # The address names the domain even when the Host is someone's own autoconfig name.
    assert _get(_app(), "autoconfig.example.net", path) == (200, "application/xml")
    assert _get(_app(), "autoconfig.example.net", "/mail/config-v1.1.xml")[0] == 404
