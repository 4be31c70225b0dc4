"""Preloading modules before the privilege drop leaves logging as Hato set it: dkimpy's
arcsign tool, once imported by the walk, installed a DEBUG root handler at import, and every
message verified then wrote dkimpy's debug lines to stderr."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

PROBE = (
    "import logging\n"
    "from hato.boot.predrop import preload\n"
    "preload()\n"
    "root = logging.getLogger()\n"
    "print(len(root.handlers), logging.getLevelName(root.level))\n"
)


def test_preload_installs_no_root_log_handler() -> None:
    # A fresh interpreter: this process may have imported the modules already.
    done = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert done.stdout.split() == ["0", "WARNING"], done.stdout + done.stderr


# Issue 15 item 2: the ACME client (acme, requests, urllib3, pyOpenSSL, josepy: ~10 MiB in
# every process) and aiohttp (the web and metrics endpoints, rspamd's learning; the MTA-STS
# fetch has its own HTTPS GET) are imported only when configured, then before the fork.
SERVE_WITHOUT_ACME = (
    "import sys\n"
    "import hato.boot.supervisor\n"
    "from hato.boot.predrop import preload\n"
    "from kit import config\n"
    "import pathlib, tempfile\n"
    "preload(config.parse('', pathlib.Path(tempfile.mkdtemp())))\n"
    "names = ('acme', 'requests', 'hato.acme', 'aiohttp', 'hato.server.web')\n"
    "print(sorted(m for m in names if m in sys.modules))\n"
)
SERVE_WITH_ACME = (
    "import sys\n"
    "import hato.boot.supervisor\n"
    "from hato.boot.predrop import preload\n"
    "from kit import config\n"
    "import pathlib, tempfile\n"
    "text = '[tls]\\nacme = { email = \"postmaster@example.org\" }\\n'\n"
    "preload(config.parse(text, pathlib.Path(tempfile.mkdtemp())))\n"
    "from hato.boot.acme import MODULES\n"
    "print(all(m in sys.modules for m in ('acme.client', *MODULES)))\n"
)


def _fresh(probe: str) -> str:
    tests = Path(__file__).resolve().parents[2]  # for `kit`
    env = {**os.environ, "PYTHONPATH": str(tests)}
    done = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, env=env
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_serve_without_acme_does_not_import_the_acme_client() -> None:
    assert _fresh(SERVE_WITHOUT_ACME) == "[]"


def test_preload_imports_the_acme_client_when_configured() -> None:
    assert _fresh(SERVE_WITH_ACME) == "True"


SERVE_WITH_ENDPOINTS = (
    "import sys\n"
    "import hato.boot.supervisor\n"
    "from hato.boot.predrop import preload\n"
    "from kit import config\n"
    "import pathlib, tempfile\n"
    'text = \'[wkd]\\naddress = "127.0.0.1:8080"\\n[metrics]\\naddress = "127.0.0.1:9100"\\n\'\n'
    "preload(config.parse(text, pathlib.Path(tempfile.mkdtemp())))\n"
    "from hato.boot.web import MODULES\n"
    "print(all(m in sys.modules for m in MODULES))\n"
)


def test_preload_imports_the_web_endpoint_when_configured() -> None:
    assert _fresh(SERVE_WITH_ENDPOINTS) == "True"


SERVE_WITH_RSPAMD = (
    "import sys\n"
    "import hato.boot.supervisor\n"
    "from hato.boot.predrop import preload\n"
    "from kit import config\n"
    "import pathlib, tempfile\n"
    "preload(config.parse('[rspamd]\\n', pathlib.Path(tempfile.mkdtemp())))\n"
    "print('aiohttp' in sys.modules and 'multidict' in sys.modules)\n"
)


def test_preload_imports_aiohttp_for_rspamd_when_configured() -> None:
    assert _fresh(SERVE_WITH_RSPAMD) == "True"
