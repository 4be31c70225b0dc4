"""Shared set-up of real peers for the integration tests and the benchmarks.

The real Hato process (`hato.py`), a private Postfix instance (`postfix.py`), Maildir reading
(`maildir.py`) and loopback helpers (`net.py`). Nothing here imports pytest, so the benchmarks use
the same code; the pytest glue lives in `tests/integration/conftest.py`.
"""
