// The page's state, in one place, and a tiny subscription mechanism.
// Views read `state` and re-render when told that a key changed.

export const state = {
  me: null, //          {clientId, fingerprint}
  settings: null, //    see Settings in src-tauri/src/storage/settings.rs
  peers: [], //         PeerView[], in the backend's order
  groups: [], //        GroupView[], most recent first
  selected: null, //    peer id of the open conversation, or `group:<id>` for a group
  connection: null, //  ConnectionView
  dataDir: "",
};

const listeners = new Map();

/** Calls `fn(state[key])` whenever `key` changes. */
export function subscribe(key, fn) {
  if (!listeners.has(key)) listeners.set(key, new Set());
  listeners.get(key).add(fn);
}

/** Sets `key` and tells its subscribers. */
export function set(key, value) {
  state[key] = value;
  for (const fn of listeners.get(key) || []) fn(value);
}

/** The peer with this id, if known. */
export function peerById(id) {
  return state.peers.find((p) => p.id === id) || null;
}
