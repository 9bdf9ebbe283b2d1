// One conversation's messages, merged from a page of history and `message` events.
import { DELIVERY_STATUS_ORDER } from "../../ui/js/contract.js";

/** Adds `incoming` to `list` by id, ordered by `seq`; of two statuses the later one in the
 *  contract's order wins (the backend sends them already merged). */
export function merge(list, incoming) {
  const byId = new Map(list.map((m) => [m.id, m]));
  for (const m of incoming) {
    const shown = byId.get(m.id);
    const rank = (x) => DELIVERY_STATUS_ORDER.indexOf(x.status);
    if (!shown || rank(m) > rank(shown)) byId.set(m.id, m);
  }
  return [...byId.values()].sort((a, b) => a.seq - b.seq);
}
