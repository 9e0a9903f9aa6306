"""Announce user-domain changes that concern this app to the rest of it: for
each relevant ``user-domain-changed`` (about one of its domains, cluster-wide
or from this node's ldapproxy) publish ``mail-domains-changed`` with the app's
domains among the event's, one per line. A payload that is not a JSON object
is rejected (dead-lettered with the reason); one that says the directory is
still syncing (``"syncing": true``) is retried after 1,000 ms. The same
handler as guests/examples/domain-relay (Rust) and guests/js/domain-relay;
tests/all/conformance.rs compares the three.
"""
from weir_sdk import Batch, domains, handler


@handler
def handle(batch: Batch) -> None:
    for index, event in enumerate(batch.events):
        if event.name != "user-domain-changed":
            continue
        try:
            payload = event.json()
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            batch.reject(index, "payload is not a JSON object")
            continue
        if payload.get("syncing") is True:
            batch.retry(index, 1000)
            continue
        local = not event.source.startswith("module/ldapproxy") or event.is_local()
        mine = [d for d in event.domains if domains.is_mine(d)]
        if local and mine:
            batch.publish("mail-domains-changed", "\n".join(mine))
