"""Automatic certificates (RFC 8555 ACME): the order (client.py), the HTTP-01 answers
(challenge.py), where the files live and when to renew (store.py, manager.py).

Depends on model only; the composition root (boot/acme.py) gives it plain values and the
callback that swaps the new certificate into the listeners.
"""
