"""What the README's install command gives (issue 13): OpenPGP included, and every install hint
in the code names something that exists."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from packaging.requirements import Requirement

SRC = Path(__file__).resolve().parents[2] / "src" / "hato"


def test_pysequoia_is_a_regular_dependency() -> None:
    requires = [Requirement(r) for r in importlib.metadata.requires("hato") or []]
    regular = {r.name for r in requires if r.marker is None}
    assert "pysequoia" in regular, "OpenPGP must work with `pip install -e '.[fast]'`"


def test_no_hint_installs_hato_from_the_index() -> None:
    # hato is not on PyPI: `pip install 'hato[openpgp]'` fails there. A hint names a package
    # that pip can find (or says to reinstall from the source).
    hints = [
        (path.name, line.strip())
        for path in SRC.rglob("*.py")
        for line in path.read_text(encoding="utf-8").splitlines()
        if re.search(r"pip install '?hato\[", line)
    ]
    assert hints == []
