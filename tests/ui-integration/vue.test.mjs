import { test } from "node:test";
import assert from "node:assert/strict";
import { effectScope, nextTick, ref } from "vue";
import { ConnectionState, DeliveryStatus, Event } from "../../ui/js/contract.js";
import { useLattice } from "./use-lattice-vue.mjs";
import { fakeTauri, message, settle } from "./support/fake-tauri.mjs";

test("the Vue composable follows the backend's events and keeps the newer status", async () => {
  const tauri = fakeTauri();
  const peerId = ref("bob");
  const scope = effectScope();
  const lattice = scope.run(() => useLattice(tauri, peerId));
  await settle();
  assert.equal(lattice.connection.value.state, ConnectionState.CONNECTED);
  assert.deepEqual(lattice.messages.value.map((m) => [m.id, m.status]), [["m1", DeliveryStatus.DELIVERED]]);

  await lattice.send("hello");
  tauri.emit(Event.MESSAGE, message("m2", 2, DeliveryStatus.QUEUED));
  tauri.emit(Event.MESSAGE, message("m2", 2, DeliveryStatus.SENT));
  assert.deepEqual(lattice.messages.value.map((m) => [m.id, m.status]), [
    ["m1", DeliveryStatus.DELIVERED],
    ["m2", DeliveryStatus.QUEUED],
  ]);

  // Another conversation: its own history, and bob's events no longer land in it.
  peerId.value = "carol";
  await nextTick();
  await settle();
  tauri.emit(Event.MESSAGE, message("m3", 3, DeliveryStatus.SENT));
  assert.deepEqual(lattice.messages.value, []);

  scope.stop();
  await settle();
  assert.equal(tauri.listening(), 0, "stopping the scope unsubscribes");
});
