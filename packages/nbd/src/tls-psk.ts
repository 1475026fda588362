import tls from 'node:tls';
import type { Duplex } from 'node:stream';
import type { PskKeys } from './psk-keys.ts';

/**
 * PSK cipher suites that GnuTLS (qemu, libnbd, nbdkit) negotiates with
 * OpenSSL: TLS 1.3 suites are used with PSK as well.
 */
export const PSK_CIPHERS = [
  'TLS_AES_256_GCM_SHA384',
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'ECDHE-PSK-AES256-CBC-SHA384',
  'ECDHE-PSK-AES128-CBC-SHA256',
  'ECDHE-PSK-CHACHA20-POLY1305',
  'DHE-PSK-AES256-GCM-SHA384',
  'DHE-PSK-AES128-GCM-SHA256',
  'DHE-PSK-CHACHA20-POLY1305',
  'PSK-AES256-GCM-SHA384',
  'PSK-AES128-GCM-SHA256',
  'PSK-CHACHA20-POLY1305',
].join(':');

export type PskLookup = (identity: string) => Buffer | undefined;

export function pskLookup(keys: PskKeys | PskLookup): PskLookup {
  return typeof keys === 'function' ? keys : (identity) => keys.get(identity);
}

/** Upgrades the server side of a connection to TLS-PSK (after NBD_OPT_STARTTLS). */
export function startServerTls(socket: Duplex, lookup: PskLookup): tls.TLSSocket {
  return new tls.TLSSocket(socket, {
    isServer: true,
    ciphers: PSK_CIPHERS,
    minVersion: 'TLSv1.2',
    pskCallback: (_socket: tls.TLSSocket, identity: string) => lookup(identity) ?? null,
  } as tls.TLSSocketOptions);
}

export interface ClientPsk {
  identity: string;
  key: Buffer;
}

/** Upgrades the client side of a connection to TLS-PSK; resolves once the handshake is done. */
export function startClientTls(socket: Duplex, psk: ClientPsk): Promise<tls.TLSSocket> {
  return new Promise((resolve, reject) => {
    const secure = tls.connect({
      socket,
      ciphers: PSK_CIPHERS,
      minVersion: 'TLSv1.2',
      checkServerIdentity: () => undefined,
      pskCallback: () => ({ identity: psk.identity, psk: psk.key }),
    });
    const fail = (error: Error) => {
      secure.destroy();
      reject(error);
    };
    secure.once('error', fail);
    secure.once('close', () => reject(new Error('connection closed during the TLS handshake')));
    secure.once('secureConnect', () => {
      secure.off('error', fail);
      resolve(secure);
    });
  });
}
