import { createSocket, type Socket as UdpSocket } from 'node:dgram';
import { createConnection, createServer, type Socket } from 'node:net';
import { ArkError, ExitCode } from '@ark/cli';

export interface Endpoint {
  readonly address: string;
  readonly port: number;
}

/** A userspace forwarder from a host socket to an address in a namespace. */
export interface PortProxy {
  /** the port it listens on (the one the system chose when asked for port 0) */
  readonly port: number;
  close(): Promise<void>;
}

/** How long a UDP client's session lives without traffic. */
const UDP_SESSION_IDLE_MS = 60_000;

function listenError(error: NodeJS.ErrnoException, protocol: string, listen: Endpoint): Error {
  const where = `${listen.address}:${listen.port}/${protocol}`;
  if (error.code === 'EADDRINUSE') {
    return new ArkError('PORT_IN_USE', `host port ${where} is already in use`, { hint: 'choose another host port', exitCode: ExitCode.badInput });
  }
  if (error.code === 'EADDRNOTAVAIL') {
    return new ArkError('BAD_HOST_ADDRESS', `${listen.address} is not an address of this host`, { hint: "run 'ip address' to list them", exitCode: ExitCode.badInput });
  }
  return error;
}

export function startTcpProxy(listen: Endpoint, target: Endpoint): Promise<PortProxy> {
  const connections = new Set<Socket>();
  const server = createServer({ allowHalfOpen: true }, (client) => {
    const upstream = createConnection({ host: target.address, port: target.port, allowHalfOpen: true });
    for (const socket of [client, upstream]) {
      connections.add(socket);
      socket.on('close', () => {
        connections.delete(socket);
        client.destroy();
        upstream.destroy();
      });
      socket.on('error', () => {}); // 'close' follows and tears down both sides
    }
    client.pipe(upstream);
    upstream.pipe(client);
  });
  return new Promise((resolve, reject) => {
    server.once('error', (error) => reject(listenError(error, 'tcp', listen)));
    server.listen({ host: listen.address, port: listen.port, exclusive: true }, () => {
      server.on('error', () => {});
      const address = server.address();
      resolve({
        port: typeof address === 'object' && address !== null ? address.port : listen.port,
        close: () =>
          new Promise<void>((done) => {
            for (const socket of connections) socket.destroy();
            server.close(() => done());
          }),
      });
    });
  });
}

export function startUdpProxy(listen: Endpoint, target: Endpoint): Promise<PortProxy> {
  const server = createSocket({ type: 'udp4', reuseAddr: false });
  const sessions = new Map<string, { socket: UdpSocket; timer: NodeJS.Timeout }>();
  const endSession = (key: string): void => {
    const session = sessions.get(key);
    if (!session) return;
    sessions.delete(key);
    clearTimeout(session.timer);
    session.socket.close();
  };
  server.on('message', (message, client) => {
    const key = `${client.address}:${client.port}`;
    let session = sessions.get(key);
    if (session === undefined) {
      const socket = createSocket('udp4');
      socket.on('message', (reply) => {
        sessions.get(key)?.timer.refresh();
        server.send(reply, client.port, client.address);
      });
      socket.on('error', () => endSession(key));
      session = { socket, timer: setTimeout(() => endSession(key), UDP_SESSION_IDLE_MS).unref() };
      sessions.set(key, session);
    }
    session.timer.refresh();
    session.socket.send(message, target.port, target.address);
  });
  return new Promise((resolve, reject) => {
    server.once('error', (error) => reject(listenError(error, 'udp', listen)));
    server.bind({ address: listen.address, port: listen.port, exclusive: true }, () => {
      server.removeAllListeners('error');
      server.on('error', () => {});
      resolve({
        port: server.address().port,
        close: () =>
          new Promise<void>((done) => {
            for (const key of [...sessions.keys()]) endSession(key);
            server.close(() => done());
          }),
      });
    });
  });
}
