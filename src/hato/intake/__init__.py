"""The one pipeline every message enters by (DESIGN.md "One way in"): the SMTP session, local
submission (hato-sendmail, the maildrop) and the server's own notices (DSNs) all build a
`Transaction` and pass the same steps.

- MAIL and RCPT (recipients.py): sender policy and binding, the RFC 5321 §4.5.1 postmaster
  rewrite, the address book, relay control, the key verdict of encryption at rest
  (protect.py), the sending limits.
- End of message: the message as it arrives and its header checks (incoming.py: the loop
  check, headers.py), then one function for every door (finish.py `end_of_message`): the
  door's steps, decided in one place (`finish.steps`: the authentication checks of inbound.py,
  DKIM signing and ARC sealing of signing.py, rspamd of spamcheck.py, the milters of
  miltercheck.py), then (message.py) the copies to store (plaintext, or one encrypted copy per
  keyed recipient: protect.py), each with its prefix (Delivered-To, the door's added headers,
  Received: received.py) into our own Maildirs at once (direct.py) or into the queue.
"""
