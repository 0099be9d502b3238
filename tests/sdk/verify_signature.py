"""Verifies a request keygate signed, with the reference receivers: the
`standardwebhooks` package for the webhook-* headers, and seed 004's own
bcrypt check for X-Request-Nonce. Reads one JSON object on stdin:
{"secret": str, "headers": {name: value}, "body_b64": str}. Prints "ok" and
exits 0 when both verify and every tampered variant is refused."""

import base64
import json
import sys

import bcrypt
from standardwebhooks.webhooks import Webhook, WebhookVerificationError


def main() -> int:
    given = json.load(sys.stdin)
    secret = given["secret"]
    headers = given["headers"]
    body = base64.b64decode(given["body_b64"])

    # A Standard Webhooks receiver is configured with "whsec_" + base64 of the
    # hook key's UTF-8 bytes.
    webhook = Webhook("whsec_" + base64.b64encode(secret.encode("utf-8")).decode())
    webhook.verify(body, headers)

    refused = 0
    other = Webhook("whsec_" + base64.b64encode(b"another hook key").decode())
    moved = dict(headers, **{"webhook-timestamp": str(int(headers["webhook-timestamp"]) + 1)})
    stale = dict(headers, **{"webhook-timestamp": str(int(headers["webhook-timestamp"]) - 3600)})
    for receiver, payload, sent in [
        (webhook, body + b" ", headers),
        (other, body, headers),
        (webhook, body, moved),
        (webhook, body, stale),
    ]:
        try:
            receiver.verify(payload, sent)
        except WebhookVerificationError:
            refused += 1
    if refused != 4:
        print(f"only {refused} of 4 tampered requests were refused")
        return 1

    # Seed 004's Python receiver, as written there.
    nonce = headers.get("x-request-nonce")
    hook_key = secret
    if nonce is None or hook_key is None:
        print("no nonce")
        return 1
    if not bcrypt.checkpw(hook_key.encode("utf-8"), nonce.encode("utf-8")):
        print("the nonce does not verify")
        return 1
    if bcrypt.checkpw(b"another hook key", nonce.encode("utf-8")):
        print("the nonce verifies with another key")
        return 1
    print("ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
