import { test } from "node:test";
import assert from "node:assert/strict";
import { createElement } from "react";
import TestRenderer, { act } from "react-test-renderer";
import { ConnectionState, DeliveryStatus, Event } from "../../ui/js/contract.js";
import { useLattice } from "./use-lattice-react.mjs";
import { fakeTauri, message, settle } from "./support/fake-tauri.mjs";

globalThis.IS_REACT_ACT_ENVIRONMENT = true;

test("the React hook follows the backend's events and keeps the newer status", async () => {
  const tauri = fakeTauri();
  let lattice;
  function Probe({ peerId }) {
    lattice = useLattice(tauri, peerId);
    return null;
  }
  let root;
  await act(async () => {
    root = TestRenderer.create(createElement(Probe, { peerId: "bob" }));
    await settle();
  });
  assert.equal(lattice.connection.state, ConnectionState.CONNECTED);
  assert.deepEqual(lattice.peers.map((p) => p.id), ["bob"]);
  assert.deepEqual(lattice.messages.map((m) => [m.id, m.status]), [["m1", DeliveryStatus.DELIVERED]]);

  await act(async () => {
    await lattice.send("hello");
  });
  assert.deepEqual(tauri.calls.at(-1), ["send_message", { peerId: "bob", text: "hello" }]);
  await act(async () => {
    tauri.emit(Event.MESSAGE, message("m2", 2, DeliveryStatus.SENT));
    // A stale answer arriving late does not move the message back.
    tauri.emit(Event.MESSAGE, message("m2", 2, DeliveryStatus.PENDING));
    tauri.emit(Event.MESSAGE, message("x", 3, DeliveryStatus.SENT, "carol"));
    tauri.emit(Event.CONNECTION_STATE, { state: ConnectionState.RECONNECTING, retryInSecs: 2 });
  });
  assert.deepEqual(lattice.messages.map((m) => [m.id, m.status]), [
    ["m1", DeliveryStatus.DELIVERED],
    ["m2", DeliveryStatus.SENT],
  ]);
  assert.equal(lattice.connection.state, ConnectionState.RECONNECTING);

  await act(async () => {
    root.unmount();
    await settle();
  });
  assert.equal(tauri.listening(), 0, "unmounting unsubscribes");
});
