"""A private rspamd (Debian's package) on loopback: its own configuration, database and run
directories, the packaged rules, nothing that reaches the network.

The configuration includes Debian's packaged common.conf (metrics, actions, groups,
composites, modules, settings) from /etc/rspamd, then overrides what a private instance
needs: the normal worker and the controller on free loopback ports, a controller password,
private dbdir/rundir, a log file, DNS pointed at a closed loopback port, no monitoring, a
tiny public-suffix list (the full one takes rspamd almost a minute to compile on a busy
machine), and every module that would ask DNS, fetch maps or need Redis turned off. Bayes
learns into SQLite files of its own (the packaged classifier needs Redis). Test patterns
(GTUBE's add-header and rewrite-subject variants) are on; they are for tests only.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import IO

from .net import LOOPBACK, find_peer, free_port

PASSWORD = "rspamd-test-password"
# Modules that ask DNS, fetch maps over HTTP(S) or need Redis: a private instance has none.
NETWORKED_MODULES = (
    "antivirus", "arc", "asn", "bimi", "clickhouse", "dcc", "dkim", "dkim_signing", "dmarc",
    "elastic", "emails", "external_services", "fuzzy_check", "greylist", "hfilter",
    "history_redis", "metadata_exporter", "multimap", "mx_check", "neural", "phishing",
    "ratelimit", "rbl", "replies", "reputation", "rspamd_update", "spamassassin", "spf",
    "url_redirector", "whitelist", "surbl", "p0f", "url_reputation", "url_tags", "clustering",
)  # fmt: skip
BAYES = frozenset({"BAYES_SPAM", "BAYES_HAM"})  # the statfiles of _write_config
# GTUBE: rspamd's reject pattern, and (enable_test_patterns) its variants.
GTUBE = "XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_ADD_HEADER = "YJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"
GTUBE_REWRITE_SUBJECT = "ZJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


class RspamdServer:
    """`rspamd -c DIR/rspamd.conf -f` with DIR its own; `start()` again after `stop()`."""

    name = "rspamd"

    def __init__(self, work: Path) -> None:
        self.work = work
        self.port = free_port()  # the normal worker (POST /checkv2)
        self.socket = work / "run" / "normal.sock"  # the normal worker on a unix socket too
        self.controller_port = free_port()  # learning, stat
        self.log = work / "rspamd.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._out: IO[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    @property
    def controller_url(self) -> str:
        return f"http://{LOOPBACK}:{self.controller_port}"

    def _write_config(self) -> Path:
        w = self.work
        for sub in ("local.d", "db", "run"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        for module in NETWORKED_MODULES:
            (w / "local.d" / f"{module}.conf").write_text("enabled = false;\n")
        # Ask for the headers an operator typically has rspamd add, on local clients too.
        (w / "local.d" / "milter_headers.conf").write_text(
            "extended_spam_headers = true;\nskip_local = false;\nskip_authenticated = false;\n"
        )
        (w / "tld.dat").write_text("com\nnet\norg\nexample\ntest\n")
        user = pwd.getpwuid(os.getuid()).pw_name
        config = w / "rspamd.conf"
        # Bayes in SQLite files of its own (the packaged classifier needs Redis); override.d
        # replaces the packaged classifier whole (UCL priority 10).
        (w / "override.d").mkdir(exist_ok=True)
        (w / "override.d" / "statistic.conf").write_text(
            f"""classifier "bayes" {{
  tokenizer {{ name = "osb"; }}
  backend = "sqlite3";
  # Its own learn cache ("already learned"), not the package's /var/lib/rspamd one.
  cache {{ type = "sqlite3"; path = "{w}/db/learn_cache.sqlite"; }}
  min_learns = 1;
  min_tokens = 1;
  statfile {{ symbol = "BAYES_HAM"; spam = false; path = "{w}/db/bayes.ham.sqlite"; }}
  statfile {{ symbol = "BAYES_SPAM"; spam = true; path = "{w}/db/bayes.spam.sqlite"; }}
}}
"""
        )
        config.write_text(
            f"""
.include "$CONFDIR/common.conf"
options {{
  pidfile = "{w}/run/rspamd.pid";
  dns {{ nameserver = ["{LOOPBACK}:9"]; timeout = 0.2s; retransmits = 1; }}
  local_addrs = [];
  disable_monitoring = true;
  enable_test_patterns = true;
  url_tld = "{w}/tld.dat";
  control_socket = "{w}/run/rspamd.sock mode=0600";
  cache_file = "{w}/db/symbols.cache";
  hs_cache_dir = "{w}/db/";
  stats_file = "{w}/db/stats.ucl";
  history_file = "{w}/db/rspamd.history";
  dynamic_conf = "{w}/db/rspamd_dynamic";
  task_timeout = 8s;
  tempdir = "{w}/run";
}}
logging {{ type = "file"; filename = "{self.log}"; level = "info"; }}
worker "normal" {{
  bind_socket = "{LOOPBACK}:{self.port}";
  bind_socket = "{self.socket} mode=0666";
  mime = true;
  count = 1;
}}
worker "controller" {{
  bind_socket = "{LOOPBACK}:{self.controller_port}";
  count = 1;
  password = "{PASSWORD}";
  enable_password = "{PASSWORD}";
  secure_ip = [];
  static_dir = "${{WWWDIR}}";
}}
"""
        )
        self._user = user
        return config

    def start(self, timeout: float = 180.0) -> None:
        """Start rspamd and wait until it answers, and until its controller has both Bayes
        statfiles open. rspamd opens a statfile's SQLite file once, as each worker starts
        (rspamd 3.4, libstat/stat_config.c; the workers open, and the first creates, the same
        files at the same moment); one it failed to open then is left out for the worker's
        whole life: its /stat does not list it, and learning that class answers "cannot find
        statfile backend". Such a start is made again (3 at most)."""
        for _ in range(3):
            self._start_once(timeout)
            if self.learned(timeout=30).keys() >= BAYES:
                return
            self.stop()
        raise RuntimeError(f"rspamd's controller has not opened {sorted(BAYES)} in 3 starts")

    def _start_once(self, timeout: float) -> None:
        binary = find_peer("rspamd")
        if binary is None:
            raise RuntimeError("rspamd is not installed (.ci/run installs it from Debian)")
        config = self._write_config()
        w = self.work
        self._out = open(w / "rspamd.out", "ab")  # noqa: SIM115 (closed in stop())
        self.proc = subprocess.Popen(
            [
                binary,
                "-c",
                str(config),
                "-f",
                "-u",
                self._user,
                "-g",
                self._user,
                "-i",
                f"--var=DBDIR={w}/db",
                f"--var=RUNDIR={w}/run",
                f"--var=LOCAL_CONFDIR={w}",
                f"--var=LOGDIR={w}",
            ],
            stdout=self._out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        for url in (self.url, self.controller_url):
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"rspamd exited: {self.log_text()[-2000:]}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"rspamd not ready in {timeout:g} s")
                try:
                    with urllib.request.urlopen(f"{url}/ping", timeout=2) as reply:
                        if reply.read().strip() == b"pong":
                            break
                except (OSError, urllib.error.URLError):
                    pass
                time.sleep(0.1)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            # rspamd's main process stops its workers on SIGTERM.
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None
        if self._out is not None:
            self._out.close()
            self._out = None

    def stat(self) -> dict[str, object]:
        """The controller's GET /stat (learned counts per statfile)."""
        request = urllib.request.Request(
            f"{self.controller_url}/stat", headers={"Password": PASSWORD}
        )
        with urllib.request.urlopen(request, timeout=10) as reply:
            data = json.loads(reply.read())
        assert isinstance(data, dict)
        return data

    def learned(self, timeout: float = 20.0) -> dict[str, int]:
        """{symbol: messages learned} of the Bayes statfiles. The controller can answer before
        the classifier has opened them (under load CI saw a /stat without statfiles): ask
        again until both configured ones are listed (or `timeout` seconds pass)."""
        deadline = time.monotonic() + timeout
        while True:
            out: dict[str, int] = {}
            statfiles = self.stat().get("statfiles")
            for item in statfiles if isinstance(statfiles, list) else []:
                if isinstance(item, dict):
                    out[str(item.get("symbol"))] = int(item.get("revision", 0))
            if out.keys() >= BAYES or time.monotonic() > deadline:
                return out
            time.sleep(0.1)

    def log_text(self) -> str:
        parts = []
        for path in (self.work / "rspamd.out", self.log):
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)


def enable_checks(work: Path, config: Path, nameserver: str) -> None:
    """Rspamd's SPF, DKIM, DMARC and ARC checks on, as packaged (Debian's rspamd.conf loads
    the dkim C module, with chartable and regexp, through `options.filters`, which our
    configuration replaces), asking the DNS server at `nameserver`, and for loopback clients
    too (`check_local`: the tests' clients are on loopback, which rspamd otherwise trusts)."""
    for module in ("spf", "dkim", "dmarc", "arc"):
        (work / "local.d" / f"{module}.conf").write_text("check_local = true;\n")
    text = config.read_text()
    dns = f'nameserver = ["{LOOPBACK}:9"]'
    assert dns in text
    text = text.replace(dns, f'nameserver = ["{nameserver}"]')
    text = text.replace("options {", 'options {\n  filters = "chartable,dkim,regexp";', 1)
    config.write_text(text)


class CheckingRspamd(RspamdServer):
    """The private rspamd with its SPF, DKIM, DMARC and ARC checks on (`enable_checks`),
    asking the test DNS server at `nameserver`."""

    def __init__(self, work: Path, nameserver: str) -> None:
        super().__init__(work)
        self.nameserver = nameserver

    def _write_config(self) -> Path:
        config = super()._write_config()
        enable_checks(self.work, config, self.nameserver)
        return config
