"""The composition root, all of it (DESIGN.md floor 6): the process (exit codes, what is made
ready before the privilege drop), typed reload, and whom the data directory belongs to;
`app.py` wires one server process (`run`), `supervisor.py` is `hato serve` (one process, or
the supervisor of its workers).

May import every room.
"""
