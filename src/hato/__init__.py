"""Hato: a complete mail server (SMTP MX, submission, durable queue, Maildir delivery)."""

__version__ = "0.1.0"
