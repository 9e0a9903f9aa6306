"""NS8 mail: restart dovecot and postfix once per batch when a user domain the
app serves changes, if the change is cluster-wide (e.g. the openldap password
rotation) or announced by this node's own ldapproxy (ldapproxy port remaps are
node-local). The same handler as guests/examples/mail (Rust) and
guests/js/mail; tests/all/conformance.rs compares the three.
"""
# ANCHOR: handler
from weir_sdk import Batch, handler, log


@handler
def handle(batch: Batch) -> None:
    relevant = any(
        event.name == "user-domain-changed"
        and event.touches_my_domains()
        and (not event.source.startswith("module/ldapproxy") or event.is_local())
        for event in batch.events
    )
    if relevant:
        log.info("user domain changed: restarting mail services")
        batch.restart("dovecot.service")
        batch.restart("postfix.service")
# ANCHOR_END: handler
