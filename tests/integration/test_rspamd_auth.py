"""Rspamd does not check again what Hato has checked (issue 17, "Performance"): with
`[rspamd] trust_our_checks`, `hato serve` tells its rspamd our SPF, DKIM, DMARC and ARC
results (a `Settings` header) and rspamd inserts them as its own symbols instead of asking
DNS and verifying again; a message that fails SPF and DMARC scores exactly as when rspamd
checked it itself. Rspamd (Debian's package, its checks on, also for loopback clients) asks a
test DNS server of its own, so its lookups are counted apart from Hato's."""

from __future__ import annotations

import re
import smtplib
import time
from pathlib import Path

from peers.authcheck import CheckingHato
from peers.net import require_peer
from peers.rspamd import CheckingRspamd
from peers.server import DomainSetup, MailSetup

from dnsserver import DnsTestServer, ZoneValue

SENDER = "alice@sender.test"
ZONE: dict[str, dict[str, list[ZoneValue]]] = {
    # The client is on loopback, not sender.test's permitted address: SPF fails (-all), and
    # with no DKIM signature DMARC fails too; p=quarantine, so Hato delivers it (into Junk).
    "sender.test": {"TXT": ["v=spf1 ip4:192.0.2.9 -all"]},
    "_dmarc.sender.test": {"TXT": ["v=DMARC1; p=quarantine"]},
}
MESSAGE = (
    f"From: Alice <{SENDER}>\r\nTo: bob@dest.example\r\nSubject: quarterly figures\r\n"
    "Message-ID: <figures-1@sender.test>\r\nDate: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n"
    + "The figures are attached in the next message.\r\n"
    * 20
)
# rspamd's task log line: "(default: F (greylist): [5.90/15.00] [SYM(1.00){opts;},...])".
TASK_LINE = re.compile(r"rspamd_task_write_log: .*?\[(-?[\d.]+)/[\d.]+\] \[(.*?)\]\)")
SYMBOL = re.compile(r"([A-Z0-9_]+)\((-?[\d.]+)\)")


class TrustingHato(CheckingHato):
    """Hato checking inbound mail against the test DNS server, then asking rspamd."""

    def __init__(self, data_dir: Path, nameserver: str, url: str, trust: bool) -> None:
        setup = MailSetup(domains=(DomainSetup("dest.example", accept_any=True),))
        super().__init__(data_dir, setup, nameserver)
        self.url = url
        self.trust = trust

    def _config_text(self) -> str:
        return super()._config_text() + (
            f'\n[rspamd]\nurl = "{self.url}"\ntrust_our_checks = {str(self.trust).lower()}\n'
            # Whatever rspamd says, deliver: the test compares its verdicts.
            'reject = "junk"\nsoft_reject = "junk"\ngreylist = "junk"\n'
        )


def scan_through_hato(
    tmp_path: Path, rspamd: CheckingRspamd, hato_dns: str, trust: bool
) -> tuple[float, dict[str, float]]:
    """Send MESSAGE through a Hato; rspamd's score and {symbol: score} for it."""
    before = len(TASK_LINE.findall(rspamd.log_text()))
    hato = TrustingHato(tmp_path / f"hato-{trust}", hato_dns, rspamd.url, trust)
    hato.start()
    try:
        with smtplib.SMTP(hato.host, hato.port, timeout=30) as smtp:
            smtp.sendmail(SENDER, ["bob@dest.example"], MESSAGE.encode())
        assert hato.wait_for_log(r"event=rspamd .*response=junk"), hato.log_text()
    finally:
        hato.stop()
    deadline = time.monotonic() + 30
    while len(lines := TASK_LINE.findall(rspamd.log_text())) == before:
        assert time.monotonic() < deadline, rspamd.log_text()[-3000:]
        time.sleep(0.05)  # polling rspamd's log for its line, not a synchronisation sleep
    score, symbols = lines[before]
    return float(score), {name: float(value) for name, value in SYMBOL.findall(symbols)}


def test_rspamd_takes_our_results_and_scores_as_before(tmp_path: Path) -> None:
    require_peer("rspamd")
    with DnsTestServer(ZONE) as hato_dns, DnsTestServer(ZONE) as rspamd_dns:
        rspamd = CheckingRspamd(tmp_path / "rspamd", rspamd_dns.nameserver)
        rspamd.start()
        try:
            # First with our results (rspamd's SPF cache is still empty), then without.
            trusted = scan_through_hato(tmp_path, rspamd, hato_dns.nameserver, trust=True)
            asked = rspamd_dns.queries_for("sender.test", "TXT") + rspamd_dns.queries_for(
                "_dmarc.sender.test", "TXT"
            )
            checked = scan_through_hato(tmp_path, rspamd, hato_dns.nameserver, trust=False)
        finally:
            rspamd.stop()
        # Rspamd asked nothing for our results; on its own it asks for the SPF and DMARC
        # records (so the first scan would have, had it checked).
        assert asked == 0
        assert rspamd_dns.queries_for("sender.test", "TXT") >= 1
        assert rspamd_dns.queries_for("_dmarc.sender.test", "TXT") >= 1
        assert hato_dns.queries_for("_dmarc.sender.test", "TXT") >= 1  # Hato did check
    score, symbols = trusted
    # Hato's verdict (spf=fail, dkim=none, dmarc=fail with p=quarantine, arc=none) in rspamd's
    # own symbols, with the scores its configuration gives them, composites included.
    for name in ("R_SPF_FAIL", "R_DKIM_NA", "DMARC_POLICY_QUARANTINE", "VIOLATED_DIRECT_SPF"):
        assert name in symbols, symbols
    # The same scores as when rspamd checked it itself: the verdict is no weaker.
    assert (score, symbols) == checked
