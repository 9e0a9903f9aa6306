// {{name}}: restart `{{name}}.service` once per batch when a user domain the
// app serves changes, cluster-wide or announced by this node's own ldapproxy.
import { handler, log } from './weir.js';

export const handle = handler((batch) => {
  const relevant = batch.events.some(
    (event) =>
      event.name === 'user-domain-changed' &&
      event.touchesMyDomains() &&
      (!event.source.startsWith('module/ldapproxy') || event.isLocal()),
  );
  if (relevant) {
    log.info('user domain changed: restarting {{name}}.service');
    batch.restart('{{name}}.service');
  }
});
