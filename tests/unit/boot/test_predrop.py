"""Preloading modules before the privilege drop leaves logging as Hato set it: dkimpy's
arcsign tool, once imported by the walk, installed a DEBUG root handler at import, and every
message verified then wrote dkimpy's debug lines to stderr."""

from __future__ import annotations

import subprocess
import sys

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
