"""The doctor: checks of deliverability from outside (DNS, TLS, reputation, port 25).

May import hato.model, hato.authcheck and hato.delivery's pure helpers; never hato.config,
hato.cli, hato.boot, hato.server or hato.queue (the caller builds a `DoctorSetup`).
"""

from hato.doctor.report import Finding, Verdict, has_problems, render_json, render_text
from hato.doctor.run import run_checks
from hato.doctor.setup import DoctorSetup, DomainSetup, Listener, SmarthostSetup

__all__ = [
    "DoctorSetup",
    "DomainSetup",
    "Finding",
    "Listener",
    "SmarthostSetup",
    "Verdict",
    "has_problems",
    "render_json",
    "render_text",
    "run_checks",
]
