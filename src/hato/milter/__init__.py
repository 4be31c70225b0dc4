"""The milter protocol (Sendmail's and Postfix's content-filter plug-in convention, version 6):
the sans-IO core (protocol.py) and an asyncio client (client.py).

Must not import anything of hato but model.
"""

from hato.milter.client import MilterClient, MilterUnavailable, Outcome, Timeouts, Transaction
from hato.milter.protocol import Command

__all__ = ["Command", "MilterClient", "MilterUnavailable", "Outcome", "Timeouts", "Transaction"]
