// The original MessagingPeer `ml-kem-aes` envelope, built exactly like the original client:
// ML-KEM-768 from @noble/post-quantum 0.4.1, the raw 32-byte shared secret as the AES-256-GCM
// key (no KDF, no AAD), a random 12-byte IV, serializedEncryptedData = base64(iv || ct || tag).
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { ml_kem768 } from '@noble/post-quantum/ml-kem';

export const ALGORITHM = 'ml-kem-aes';
const IV_LEN = 12;
const TAG_LEN = 16;

const b64 = (bytes) => Buffer.from(bytes).toString('base64');
const unb64 = (text) => new Uint8Array(Buffer.from(text, 'base64'));

/** A fresh ML-KEM-768 key pair; `seed` (64 bytes, d || z) makes it deterministic. */
export function keygen(seed) {
  return seed === undefined ? ml_kem768.keygen() : ml_kem768.keygen(seed);
}

/**
 * Encrypts `text` to `publicKeyBytes` (1184 bytes). `kemRandomness` (32 bytes) and `iv` (12 bytes)
 * are only for known-answer vectors; real use leaves them random.
 */
export function seal(publicKeyBytes, text, kemRandomness, iv = randomBytes(IV_LEN)) {
  const { cipherText, sharedSecret } =
    kemRandomness === undefined
      ? ml_kem768.encapsulate(publicKeyBytes)
      : ml_kem768.encapsulate(publicKeyBytes, kemRandomness);
  const cipher = createCipheriv('aes-256-gcm', sharedSecret, iv);
  const ct = Buffer.concat([cipher.update(text, 'utf8'), cipher.final()]);
  const tag = cipher.getAuthTag();
  return {
    algorithm: ALGORITHM,
    serializedCipherText: b64(cipherText),
    serializedEncryptedData: b64(Buffer.concat([iv, ct, tag])),
  };
}

/** Decrypts an envelope with the FIPS 203 decapsulation key (2400 bytes); returns the text. */
export function open(secretKeyBytes, envelope) {
  if (envelope.algorithm !== ALGORITHM) throw new Error(`not ${ALGORITHM}: ${envelope.algorithm}`);
  const sharedSecret = ml_kem768.decapsulate(unb64(envelope.serializedCipherText), secretKeyBytes);
  const data = Buffer.from(envelope.serializedEncryptedData, 'base64');
  if (data.length < IV_LEN + TAG_LEN) throw new Error('encrypted data too short');
  const decipher = createDecipheriv('aes-256-gcm', sharedSecret, data.subarray(0, IV_LEN));
  decipher.setAuthTag(data.subarray(data.length - TAG_LEN));
  const pt = Buffer.concat([decipher.update(data.subarray(IV_LEN, data.length - TAG_LEN)), decipher.final()]);
  return new TextDecoder('utf-8', { fatal: true }).decode(pt);
}
