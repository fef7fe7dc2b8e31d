// Verifies a certificate of deletion in the browser (WebCrypto, ECDSA P-256/SHA-256).
import type { CertificateResponse, PublicKey } from './types';

function fromBase64(text: string): Uint8Array<ArrayBuffer> {
  const raw = atob(text.replace(/\s+/g, ''));
  const out = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) out[i] = raw.charCodeAt(i);
  return out;
}

/** ASN.1 DER `SEQUENCE { INTEGER r, INTEGER s }` → the 64-byte r‖s WebCrypto takes. */
export function derToRaw(der: Uint8Array, size = 32): Uint8Array<ArrayBuffer> {
  let i = 0;
  const expect = (tag: number) => {
    if (der[i++] !== tag) throw new Error('not a DER ECDSA signature');
  };
  const length = () => {
    let len = der[i++];
    if (len & 0x80) {
      const n = len & 0x7f;
      len = 0;
      for (let k = 0; k < n; k++) len = (len << 8) | der[i++];
    }
    return len;
  };
  expect(0x30);
  length();
  const out = new Uint8Array(size * 2);
  for (let part = 0; part < 2; part++) {
    expect(0x02);
    let len = length();
    let start = i;
    while (len > size && der[start] === 0) {
      start++;
      len--;
    }
    if (len > size) throw new Error('signature integer too long');
    out.set(der.subarray(start, start + len), part * size + (size - len));
    i = start + len;
  }
  return out;
}

/** A KMS key named by id or by ARN (`arn:aws:kms:…:key/<id>`) is the same key. */
export function sameKey(a: string, b: string): boolean {
  const id = (k: string) => k.replace(/^arn:aws[a-z-]*:kms:[^:]*:[0-9]*:key\//, '');
  return a === b || id(a) === id(b);
}

export interface Verification {
  ok: boolean;
  reason?: string;
}

export async function verifyCertificate(cert: CertificateResponse, key: PublicKey): Promise<Verification> {
  if (!sameKey(cert.key_id, key.key_id)) return { ok: false, reason: `signed with key ${cert.key_id}, published key is ${key.key_id}` };
  if (key.algorithm !== 'ECDSA_SHA_256' || cert.algorithm !== 'ECDSA_SHA_256') {
    return { ok: false, reason: `unexpected algorithm ${cert.algorithm}` };
  }
  try {
    const publicKey = await crypto.subtle.importKey(
      'spki',
      fromBase64(key.der_base64),
      { name: 'ECDSA', namedCurve: 'P-256' },
      false,
      ['verify'],
    );
    const ok = await crypto.subtle.verify(
      { name: 'ECDSA', hash: 'SHA-256' },
      publicKey,
      derToRaw(fromBase64(cert.signature)),
      new TextEncoder().encode(cert.document),
    );
    return ok ? { ok } : { ok, reason: 'the signature does not match the document' };
  } catch (err) {
    return { ok: false, reason: err instanceof Error ? err.message : String(err) };
  }
}

export function signatureBytes(cert: CertificateResponse): Uint8Array<ArrayBuffer> {
  return fromBase64(cert.signature);
}
