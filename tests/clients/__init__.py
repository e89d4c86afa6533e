"""Real mail clients configured only from the published Secret (issue 15).

servers.py runs the loopback servers that record what each client did, secret.py renders the
Secret the way the reconciler publishes it and lays it out as a mounted volume plus envFrom
variables, runners.py runs each client, and snippets/ holds the programs the README shows.
"""
