"""Authentication checks: SPF (RFC 7208), DKIM, DMARC (RFC 7489), ARC.

May import model only (DNS only through `hato.model.dns.Resolver`).
"""
