"""The composition root, piece by piece (DESIGN.md floor 6): the process (exit codes, what is
made ready before the privilege drop), typed reload, and whom the data directory belongs to.
hato.app and hato.supervisor are its older parts and move here as they are touched.

May import every room.
"""
