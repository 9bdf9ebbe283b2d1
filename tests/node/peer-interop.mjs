#!/usr/bin/env node
// An original-style MessagingPeer client, driven by crates/peer/tests/node_interop.rs:
//
//   node peer-interop.mjs <serverUrl> <rustPeerId> [myId] [text]
//
// It speaks the protocol exactly as the original TypeScript client does: no requestId, an
// unverifiable `verification` ("ml-dsa"), `publicKey` as a byte array, `ml-kem-aes` envelopes.
// It registers, discovers, fetches the Rust peer's key, sends it an ml-kem-aes message, waits for
// the Rust peer's reply, opens it and prints the plaintext on stdout. Exit 0 on success, 1 on an
// error frame or a failure to open, 2 on timeout.
import WebSocket from 'ws';
import * as envelope from './envelope.mjs';

const [url, rustId, myId = 'js-client', text = 'hello from node'] = process.argv.slice(2);
if (!url || !rustId) {
  console.error('usage: peer-interop.mjs <serverUrl> <rustPeerId> [myId] [text]');
  process.exit(1);
}
const TIMEOUT_MS = 20_000;
const timer = setTimeout(() => {
  console.error(`timed out after ${TIMEOUT_MS} ms`);
  process.exit(2);
}, TIMEOUT_MS);

const { publicKey, secretKey } = envelope.keygen();
const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const ws = new WebSocket(url);
const send = (type, payload) => ws.send(JSON.stringify({ type, payload }));
const fail = (why) => {
  console.error(why);
  process.exit(1);
};

ws.on('open', () => {
  send('register', {
    clientId: myId,
    publicKey: Array.from(publicKey),
    // The original client's proof: ML-DSA, which a Lattice server cannot check; it registers
    // the client as unverified.
    verification: {
      algorithm: 'ml-dsa',
      serializedPublicKey: b64(new Uint8Array(32)),
      serializedMessage: b64(new TextEncoder().encode(myId)),
      serializedSignedData: b64(new Uint8Array(64)),
    },
  });
});

ws.on('message', (data) => {
  let frame;
  try {
    frame = JSON.parse(data.toString());
  } catch (e) {
    fail(`bad frame: ${e}`);
  }
  const p = frame.payload ?? {};
  switch (frame.type) {
    case 'register':
      if (!p.success) fail(`registration failed: ${JSON.stringify(p)}`);
      send('discover', {});
      break;
    case 'discover':
      if (!p.peers.includes(rustId)) fail(`${rustId} is not online: ${JSON.stringify(p.peers)}`);
      send('request_public_key', { targetId: rustId });
      break;
    case 'public_key_response':
      if (p.peerId !== rustId) break;
      send('message', { targetId: rustId, message: envelope.seal(new Uint8Array(p.publicKey), text) });
      break;
    case 'message':
      if (p.fromId !== rustId) break;
      try {
        const plaintext = envelope.open(secretKey, p.message);
        process.stdout.write(`${plaintext}\n`);
      } catch (e) {
        fail(`cannot open the reply (${p.message?.algorithm}): ${e}`);
      }
      clearTimeout(timer);
      ws.close();
      process.exit(0);
      break;
    case 'error':
      fail(`server error ${p.errorType}: ${p.details}`);
      break;
    default:
      // peer_connected, peer_disconnected, server_question, message_ack: not needed here.
      break;
  }
});

ws.on('error', (e) => fail(`websocket error: ${e.message}`));
ws.on('close', () => fail('connection closed before the reply arrived'));
