"""NS8 mail handler for weir, in Python (componentize-py).

The same handler as the Rust one (guests/examples/mail): restart dovecot and
postfix once per batch when a user domain the app serves changes, if the
change is cluster-wide (e.g. the openldap password rotation) or announced by
this node's own ldapproxy (ldapproxy port remaps are node-local).
tests/all/python.rs runs both on the same events and compares the answers.
"""
import wit_world
from wit_world.imports import domains, log, node, types

UNITS = ("dovecot.service", "postfix.service")


def relevant(event):
    """A user-domain-changed event about one of this app's domains that is
    cluster-wide, or node-local from this node's ldapproxy."""
    return (
        event.name == "user-domain-changed"
        and any(domains.is_mine(d) for d in event.domains)
        and (
            not event.source.startswith("module/ldapproxy")
            or node.is_local(event.origin_node)
        )
    )


class WitWorld(wit_world.WitWorld):
    def handle(self, batch):
        effects = []
        if any(relevant(e) for e in batch):
            log.log(log.Level.INFO, "user domain changed: restarting mail services")
            effects = [types.Effect_Restart(unit) for unit in UNITS]
        return types.BatchResult([types.Outcome_Done() for _ in batch], effects)
