"""Microsoft Graph sendMail from the env keys (envFrom) of a Graph account's Secret: a token for
a client secret or certificate (msal) or for the password grant (GRAPH_TOKEN_URL), as
GRAPH_GRANT_TYPE says, then POST sendMail. HTTPS trust is the system's (or REQUESTS_CA_BUNDLE).
Usage: send-graph.py TO SUBJECT"""

import os
import sys

import msal
import requests

env = os.environ
if env["GRAPH_GRANT_TYPE"] == "Password":  # delegated: the OAuth 2.0 password grant, as is
    response = requests.post(env["GRAPH_TOKEN_URL"], timeout=30, data={
        "grant_type": "password", "client_id": env["GRAPH_CLIENT_ID"],
        "username": env["GRAPH_USERNAME"], "password": env["GRAPH_PASSWORD"],
        "scope": env["GRAPH_SCOPE"]})
    result = response.json()
else:  # application permissions: client credentials through msal
    if "GRAPH_CLIENT_SECRET" in env:
        credential: str | dict[str, str] = env["GRAPH_CLIENT_SECRET"]
    else:  # one PEM: the private key and its certificate
        pem = env["GRAPH_CLIENT_CERTIFICATE"]
        credential = {"private_key": pem, "public_certificate": pem}
    # The authority comes whole from the Secret: no instance-discovery round trip.
    app = msal.ConfidentialClientApplication(
        env["GRAPH_CLIENT_ID"], client_credential=credential,
        authority=env["GRAPH_AUTHORITY"], instance_discovery=False)
    result = app.acquire_token_for_client(scopes=[env["GRAPH_SCOPE"]])
if "access_token" not in result:
    sys.exit(f"no token: {result.get('error')}: {result.get('error_description')}")

message = {"subject": sys.argv[2],
           "body": {"contentType": "Text", "content": "Hello from Microsoft Graph"},
           "toRecipients": [{"emailAddress": {"address": sys.argv[1]}}]}
if env.get("GRAPH_REPLY_TO"):
    message["replyTo"] = [{"emailAddress": {"address": env["GRAPH_REPLY_TO"]}}]
response = requests.post(f"{env['GRAPH_ENDPOINT']}/v1.0/users/{env['GRAPH_USER']}/sendMail",
                         json={"message": message, "saveToSentItems": False},
                         headers={"Authorization": f"Bearer {result['access_token']}"},
                         timeout=30)
response.raise_for_status()  # 202 Accepted
