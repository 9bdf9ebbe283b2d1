// The part of `window.__TAURI__` the examples use: `core.invoke` answering from a table and
// `event.listen` on an in-memory bus the test emits on, with the backend's payload shapes.
import { ConnectionState, DeliveryStatus } from "../../../ui/js/contract.js";

export function message(id, seq, status, peerId = "bob") {
  return { id, seq, peerId, outgoing: true, body: `text ${id}`, at: 1000 + seq, status, authenticated: true };
}

export function fakeTauri() {
  const listeners = new Map();
  const calls = [];
  const answers = {
    bootstrap: () => ({
      needsSetup: false,
      connection: { state: ConnectionState.CONNECTED, retryInSecs: null, serverUrl: "ws://127.0.0.1:3005", hosting: null, detail: null },
      peers: [{ id: "bob", online: true, unread: 0 }],
      questions: [],
    }),
    load_messages: ({ peerId }) => ({ messages: peerId === "bob" ? [message("m1", 1, DeliveryStatus.DELIVERED)] : [], hasMore: false }),
    send_message: ({ peerId, text }) => ({ ...message("m2", 2, DeliveryStatus.PENDING, peerId), body: text }),
  };
  return {
    calls,
    emit(event, payload) {
      for (const handler of listeners.get(event) ?? []) handler({ event, payload });
    },
    listening() {
      return [...listeners.values()].reduce((n, set) => n + set.size, 0);
    },
    core: {
      async invoke(command, args) {
        calls.push([command, args]);
        const answer = answers[command];
        if (!answer) throw { kind: "internal", message: `no command ${command}` };
        return answer(args ?? {});
      },
    },
    event: {
      async listen(event, handler) {
        if (!listeners.has(event)) listeners.set(event, new Set());
        listeners.get(event).add(handler);
        return () => listeners.get(event).delete(handler);
      },
    },
  };
}

/** Lets pending promise callbacks run. */
export const settle = () => new Promise((resolve) => setTimeout(resolve, 0));
