"""state: pure functions from (account, old status, probe result, now) to status and Secret.

- status: the status block (DESIGN §5)
- conditions: its conditions (lastTransitionTime, observedGeneration, order) and their events
- readiness: the chain of checks behind Ready and Stalled
- schedule: when to probe and authenticate, backoff and jitter
- render: the published Secret (DESIGN §6)
- formats, java_properties: what each published format holds (env, URLs, Django, nodemailer,
  sender.json; javamail.properties and Spring's application.properties)
- truststore: the CA as ca.crt and truststore.jks

Never imports probe or store.
"""
