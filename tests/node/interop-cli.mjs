#!/usr/bin/env node
// Command-line bridge to the JavaScript envelope code, driven by crates/crypto/tests/interop_node.rs.
//
//   keygen [seedHex]                                  -> {"publicKey": b64, "secretKey": b64}
//   seal <publicKeyB64> <text>                        -> ml-kem-aes envelope JSON
//   open <secretKeyB64>            (envelope on stdin) -> plaintext
//   seal-v1 <publicKeyB64> <sender> <recipient> <messageId> <text>  -> lattice-v1 envelope JSON
//   open-v1 <secretKeyB64> <sender> <recipient> <messageId>  (envelope on stdin) -> plaintext
//   vector-v1                                         -> lattice-v1 known-answer vector JSON
//
// Keys: publicKey is the 1184-byte ML-KEM-768 encapsulation key, secretKey the 2400-byte FIPS 203
// decapsulation key (what @noble/post-quantum 0.4.1 calls secretKey). Errors go to stderr, exit 1.
import * as classic from './envelope.mjs';
import * as v1 from './lattice-v1.mjs';

const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'));
const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const unhex = (text) => new Uint8Array(Buffer.from(text, 'hex'));

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return Buffer.concat(chunks).toString('utf8');
}

function usage() {
  throw new Error('usage: interop-cli.mjs keygen [seedHex] | seal <pk> <text> | open <sk> | ' +
    'seal-v1 <pk> <sender> <recipient> <messageId> <text> | open-v1 <sk> <sender> <recipient> <messageId> | vector-v1');
}

// Fixed inputs of the lattice-v1 known-answer vector (crates/crypto/tests/vectors/lattice-v1.json).
function vectorV1() {
  const seed = new Uint8Array(Array.from({ length: 64 }, (_, i) => 0x40 + i));
  const kemRandomness = new Uint8Array(Array.from({ length: 32 }, (_, i) => 0x80 + i));
  const nonce = Buffer.from(Array.from({ length: 12 }, (_, i) => 0xc0 + i));
  const ctx = { senderId: 'alice@example', recipientId: 'bob', messageId: '01J9Z3K8Q4W6X2Y7V5T0R1S3N8' };
  const plaintext = '{"v":1,"kind":"text","body":"hello — ✓"}';
  const { publicKey } = classic.keygen(seed);
  const envelope = v1.seal(publicKey, ctx, plaintext, kemRandomness, nonce);
  return {
    description: 'lattice-v1: ML-KEM-768 keygen(seed); encapsulate(publicKey, kemRandomness); ' +
      'key = HKDF-SHA256(empty salt, ss, "lattice/v1/key"||lp(s)||lp(r)); AES-256-GCM(key, nonce, ' +
      'aad = "lattice/v1"||lp(s)||lp(r)||lp(m)); data = nonce||ct||tag. Made by tests/node/interop-cli.mjs vector-v1.',
    seed: Buffer.from(seed).toString('hex'),
    kemRandomness: Buffer.from(kemRandomness).toString('hex'),
    nonce: nonce.toString('hex'),
    ...ctx,
    plaintext,
    publicKey: b64(publicKey),
    envelope,
  };
}

async function main([command, ...args]) {
  switch (command) {
    case 'keygen': {
      const { publicKey, secretKey } = classic.keygen(args[0] === undefined ? undefined : unhex(args[0]));
      return JSON.stringify({ publicKey: b64(publicKey), secretKey: b64(secretKey) });
    }
    case 'seal':
      if (args.length !== 2) usage();
      return JSON.stringify(classic.seal(unb64(args[0]), args[1]));
    case 'open':
      if (args.length !== 1) usage();
      return classic.open(unb64(args[0]), JSON.parse(await readStdin()));
    case 'seal-v1': {
      if (args.length !== 5) usage();
      const [pk, senderId, recipientId, messageId, text] = args;
      return JSON.stringify(v1.seal(unb64(pk), { senderId, recipientId, messageId }, text));
    }
    case 'open-v1': {
      if (args.length !== 4) usage();
      const [sk, senderId, recipientId, messageId] = args;
      return v1.open(unb64(sk), { senderId, recipientId, messageId }, JSON.parse(await readStdin()));
    }
    case 'vector-v1':
      return JSON.stringify(vectorV1(), null, 2);
    default:
      usage();
  }
}

main(process.argv.slice(2)).then(
  (out) => process.stdout.write(out),
  (err) => {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  },
);
