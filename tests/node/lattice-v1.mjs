// An independent JavaScript implementation of the `lattice-v1` envelope (PROTOCOL.md, Envelopes),
// used to cross-check the Rust crate against the spec rather than against itself:
//   key  = HKDF-SHA256(salt = empty, ikm = ML-KEM shared secret,
//                      info = "lattice/v1/key" || lp(senderId) || lp(recipientId))   32 bytes
//   aad  = "lattice/v1" || lp(senderId) || lp(recipientId) || lp(messageId)
//   data = nonce (12) || AES-256-GCM ciphertext || tag (16);   lp(x) = u16 BE length || x
import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { ml_kem768 } from '@noble/post-quantum/ml-kem';

export const ALGORITHM = 'lattice-v1';
const NONCE_LEN = 12;
const TAG_LEN = 16;

function lp(text) {
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.length > 0xffff) throw new Error('field longer than 65535 bytes');
  const len = Buffer.alloc(2);
  len.writeUInt16BE(bytes.length);
  return Buffer.concat([len, bytes]);
}

function key(sharedSecret, ctx) {
  const info = Buffer.concat([Buffer.from('lattice/v1/key'), lp(ctx.senderId), lp(ctx.recipientId)]);
  return Buffer.from(hkdfSync('sha256', sharedSecret, Buffer.alloc(0), info, 32));
}

function aad(ctx) {
  return Buffer.concat([Buffer.from('lattice/v1'), lp(ctx.senderId), lp(ctx.recipientId), lp(ctx.messageId)]);
}

/** Encrypts UTF-8 `text` under ctx = {senderId, recipientId, messageId}. */
export function seal(publicKeyBytes, ctx, text, kemRandomness, nonce = randomBytes(NONCE_LEN)) {
  const { cipherText, sharedSecret } =
    kemRandomness === undefined
      ? ml_kem768.encapsulate(publicKeyBytes)
      : ml_kem768.encapsulate(publicKeyBytes, kemRandomness);
  const cipher = createCipheriv('aes-256-gcm', key(sharedSecret, ctx), nonce);
  cipher.setAAD(aad(ctx));
  const ct = Buffer.concat([cipher.update(text, 'utf8'), cipher.final()]);
  return {
    algorithm: ALGORITHM,
    serializedCipherText: Buffer.from(cipherText).toString('base64'),
    serializedEncryptedData: Buffer.concat([nonce, ct, cipher.getAuthTag()]).toString('base64'),
  };
}

/** Decrypts a `lattice-v1` envelope with the FIPS 203 decapsulation key; returns the text. */
export function open(secretKeyBytes, ctx, envelope) {
  if (envelope.algorithm !== ALGORITHM) throw new Error(`not ${ALGORITHM}: ${envelope.algorithm}`);
  const ct = new Uint8Array(Buffer.from(envelope.serializedCipherText, 'base64'));
  const sharedSecret = ml_kem768.decapsulate(ct, secretKeyBytes);
  const data = Buffer.from(envelope.serializedEncryptedData, 'base64');
  if (data.length < NONCE_LEN + TAG_LEN) throw new Error('encrypted data too short');
  const decipher = createDecipheriv('aes-256-gcm', key(sharedSecret, ctx), data.subarray(0, NONCE_LEN));
  decipher.setAAD(aad(ctx));
  decipher.setAuthTag(data.subarray(data.length - TAG_LEN));
  const pt = Buffer.concat([decipher.update(data.subarray(NONCE_LEN, data.length - TAG_LEN)), decipher.final()]);
  return new TextDecoder('utf-8', { fatal: true }).decode(pt);
}
