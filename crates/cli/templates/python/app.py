"""{{name}}: restart ``{{name}}.service`` once per batch when a user domain the
app serves changes, cluster-wide or announced by this node's own ldapproxy."""
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
        log.info("user domain changed: restarting {{name}}.service")
        batch.restart("{{name}}.service")
