// Vue: the same as a composable; `peerId` may be a ref or a getter. Call it in `setup()`.
import { onScopeDispose, ref, toValue, watch } from "vue";
import { ConnectionState, Event } from "../../ui/js/contract.js";
import { merge } from "./messages.mjs";

export function useLattice(tauri, peerId) {
  const connection = ref({ state: ConnectionState.OFFLINE });
  const peers = ref([]);
  const messages = ref([]);
  const stops = [
    tauri.event.listen(Event.CONNECTION_STATE, (e) => { connection.value = e.payload; }),
    tauri.event.listen(Event.PEER_LIST, (e) => { peers.value = e.payload; }),
    tauri.event.listen(Event.MESSAGE, (e) => {
      if (e.payload.peerId === toValue(peerId)) messages.value = merge(messages.value, [e.payload]);
    }),
  ];
  tauri.core.invoke("bootstrap").then((b) => {
    connection.value = b.connection;
    peers.value = b.peers;
  });
  watch(() => toValue(peerId), async (id) => {
    messages.value = [];
    if (!id) return;
    const page = await tauri.core.invoke("load_messages", { peerId: id, before: null, after: null, limit: 50 });
    if (id === toValue(peerId)) messages.value = merge(messages.value, page.messages);
  }, { immediate: true });
  onScopeDispose(() => {
    for (const stop of stops) stop.then((unlisten) => unlisten());
  });

  async function send(text) {
    const sent = await tauri.core.invoke("send_message", { peerId: toValue(peerId), text });
    messages.value = merge(messages.value, [sent]);
  }

  return { connection, peers, messages, send };
}
