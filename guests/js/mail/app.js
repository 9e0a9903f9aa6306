// NS8 mail: restart dovecot and postfix once per batch when a user domain the
// app serves changes, if the change is cluster-wide (e.g. the openldap
// password rotation) or announced by this node's own ldapproxy (ldapproxy
// port remaps are node-local). The same handler as guests/examples/mail (Rust)
// and guests/python/mail; tests/all/conformance.rs compares the three.
// ANCHOR: handler
import { handler, log } from '../weir.js';

export const handle = handler((batch) => {
  const relevant = batch.events.some(
    (event) =>
      event.name === 'user-domain-changed' &&
      event.touchesMyDomains() &&
      (!event.source.startsWith('module/ldapproxy') || event.isLocal()),
  );
  if (relevant) {
    log.info('user domain changed: restarting mail services');
    batch.restart('dovecot.service');
    batch.restart('postfix.service');
  }
});
// ANCHOR_END: handler
