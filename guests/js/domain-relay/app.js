// Announce user-domain changes that concern this app to the rest of it: for
// each relevant `user-domain-changed` (about one of its domains, cluster-wide
// or from this node's ldapproxy) publish `mail-domains-changed` with the
// app's domains among the event's, one per line. A payload that is not a JSON
// object is rejected (dead-lettered with the reason); one that says the
// directory is still syncing (`"syncing": true`) is retried after 1,000 ms.
// The same handler as guests/examples/domain-relay (Rust) and
// guests/python/domain-relay; tests/all/conformance.rs compares the three.
import { handler, domains } from '../weir.js';

export const handle = handler((batch) => {
  batch.events.forEach((event, index) => {
    if (event.name !== 'user-domain-changed') return;
    let payload;
    try {
      payload = event.json();
    } catch {
      payload = undefined;
    }
    if (typeof payload !== 'object' || payload === null || Array.isArray(payload)) {
      batch.reject(index, 'payload is not a JSON object');
      return;
    }
    if (payload.syncing === true) {
      batch.retry(index, 1000);
      return;
    }
    const local = !event.source.startsWith('module/ldapproxy') || event.isLocal();
    const mine = event.domains.filter((d) => domains.isMine(d));
    if (local && mine.length > 0) {
      batch.publish('mail-domains-changed', mine.join('\n'));
    }
  });
});
