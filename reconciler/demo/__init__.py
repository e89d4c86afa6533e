"""The `demo` command and the local stand-ins for other people's servers it runs against.

`command` is `email-reconciler demo`; the rest are stand-ins on 127.0.0.1 that speak the real wire
formats: `certificates` (the throwaway CA), `smtp_servers` (aiosmtpd servers and fault servers on
one loop), `https` (the HTTPS server the web fakes share), `token_endpoints` (Google's token
endpoint, the Microsoft identity platform), `graph` (Microsoft Graph's user lookup) and `identity`
(the three together, as the demo uses them). The test suite reuses them. This package sits on top:
it may import any part of the reconciler, and only cli.py and the tests import it.
"""
