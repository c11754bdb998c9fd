"""Hooks for the schema fuzzer (ops/fuzz-api.sh): two rules of the API that no JSON Schema states.

- A request names each SKU at most once (`items` of a reserve or an order). JSON Schema's
  uniqueItems compares whole lines, so the rule is in the description's prose; a generated valid
  body keeps the first line of each SKU, so that it is valid by the rule as well as by the schema.
- A payment webhook is signed over its raw body. The fuzzer signs each valid body it generates with
  the secret the server under test was given, so the webhook's handling of events is fuzzed, not
  only its signature check. Invalid cases are sent as generated.

Both apply to generated valid cases only: changing an invalid one could make it valid.
"""

import hashlib
import hmac
import json
import os
import time

import schemathesis

WEBHOOK_SECRET = os.environ["HOLDFAST_FUZZ_WEBHOOK_SECRET"].encode()
SIGNATURE_HEADERS = ("stripe-signature", "webhook-id", "webhook-timestamp", "webhook-signature")


def generated_valid(case):
    return case.meta is None or "positive" in str(case.meta.generation.mode).lower()


@schemathesis.hook
def before_call(context, case, kwargs):
    if not generated_valid(case) or not isinstance(case.body, dict):
        return
    items = case.body.get("items")
    if isinstance(items, list):
        seen = set()
        kept = []
        for line in items:
            sku = line.get("sku") if isinstance(line, dict) else None
            if sku not in seen:
                seen.add(sku)
                kept.append(line)
        case.body = {**case.body, "items": kept}
    if case.path.startswith("/v1/webhooks/"):
        raw = json.dumps(case.body, separators=(",", ":")).encode()
        stamp = str(int(time.time()))
        mac = hmac.new(WEBHOOK_SECRET, stamp.encode() + b"." + raw, hashlib.sha256).hexdigest()
        headers = {k: v for k, v in (case.headers or {}).items() if k.lower() not in SIGNATURE_HEADERS}
        headers["Stripe-Signature"] = f"t={stamp},v1={mac}"
        case.headers = headers
        kwargs["data"] = raw
