"""state: pure functions from (account, old status, probe result, now) to status and Secret.

- conditions: the status block and its conditions (DESIGN §5)
- schedule: when to probe and authenticate, backoff and jitter
- render: the published Secret (DESIGN §6)

Never imports probe or store.
"""
