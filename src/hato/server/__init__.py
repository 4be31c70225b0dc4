"""The network front: listeners by role, and the session that feeds socket bytes to the
sans-IO core (hato.smtp) and asks policy, the recipient resolver and the queue.

May import every room below it (model, smtp, policy, queue, delivery, accounts); never config.
"""
