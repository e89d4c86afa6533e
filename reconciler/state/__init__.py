"""state: pure functions from (account, old status, probe result, now) to status and Secret.

- conditions: the status block and its conditions (DESIGN §5)
- schedule: when to probe and authenticate, backoff and jitter
- render: the published Secret (DESIGN §6)
- formats, java_properties: what each published format holds (env, URLs, Django, nodemailer,
  sender.json; javamail.properties and Spring's application.properties)
- truststore: the CA as ca.crt and truststore.jks

Never imports probe or store.
"""
