"""Python mail handler for weir (componentize-py)."""
import wit_world
from wit_world.imports import domains, types


class WitWorld(wit_world.WitWorld):
    def handle(self, batch):
        mine = any(domains.is_mine(d) for e in batch for d in e.domains)
        effects = [types.Effect_Restart("dovecot.service")] if mine else []
        return types.BatchResult([types.Outcome_Done() for _ in batch], effects)
