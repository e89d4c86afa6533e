"""Private real MTAs for the suite (issue 14 item 7): Postfix with Dovecot as its SASL backend.

- `postfix.py`: one Postfix instance, many smtpd services, its log and its queue.
- `dovecot.py`: an auth-only Dovecot (passwd-file logins, auth socket, debug log of each AUTH).
- `pki.py`: a throwaway root and intermediate, server certificate files.
- `bed.py`: the setups the tests use, started together; `harness.py`: the pytest fixtures.
- `process.py`: waiting on conditions, stopping by process group.
"""
