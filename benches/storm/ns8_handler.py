#!/usr/bin/env python3
"""The NS8-style handler of the storm bench: one process per event per app,
as NS8's agent runs an app's event handler scripts. It reads the event's
payload on stdin and its identity from the environment (AGENT_EVENT_NAME,
AGENT_EVENT_SOURCE, NODE_ID, APP_KIND, APP_DOMAINS), and decides as weir's
`mail` example does:

- an app (APP_KIND=app) restarts dovecot and postfix when a
  user-domain-changed event touches one of its domains and comes either
  cluster-wide or from this node's own ldapproxy;
- a node agent (APP_KIND=node) acts on events from `cluster` only.

It prints its decision; it imports only the standard library (NS8's real
handlers also import the `agent` package, which costs more)."""
import json
import os
import sys


def decide() -> str:
    name = os.environ["AGENT_EVENT_NAME"]
    source = os.environ["AGENT_EVENT_SOURCE"]
    raw = sys.stdin.read()
    if os.environ["APP_KIND"] == "node":
        return "handle" if source == "cluster" else "ignore"
    if name != "user-domain-changed":
        return "ignore"
    try:
        payload = json.loads(raw)
    except ValueError:
        return "reject"
    if not isinstance(payload, dict):
        return "reject"
    domains = payload.get("domains") or [payload.get("domain")]
    mine = set(os.environ["APP_DOMAINS"].split(","))
    if not mine.intersection(d for d in domains if isinstance(d, str)):
        return "ignore"
    if source.startswith("module/ldapproxy") and payload.get("node_id") != int(os.environ["NODE_ID"]):
        return "ignore"
    return "restart dovecot.service postfix.service"


print(decide())
