// Serves one file over NBD until SIGINT/SIGTERM: the server the benchmark and
// manual checks start. Not a product binary (ark-registry is built on the library).
//   node packages/nbd/scripts/serve-file.ts FILE [--name N] [--port P] [--socket PATH] [--writable] [--tls-psk-file F] [--io auto|sync|async]
import { parseArgs } from 'node:util';
import { FileExport, NbdServer, readPskFile } from '@ark/nbd';

const { values, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    name: { type: 'string', default: '' },
    description: { type: 'string' },
    host: { type: 'string', default: '127.0.0.1' },
    port: { type: 'string' },
    socket: { type: 'string' },
    writable: { type: 'boolean', default: false },
    'tls-psk-file': { type: 'string' },
    io: { type: 'string', default: 'auto' },
  },
});
const path = positionals[0];
if (path === undefined) {
  process.stderr.write('usage: serve-file.ts FILE [--name N] [--port P] [--socket PATH] [--writable] [--tls-psk-file F] [--io auto|sync|async]\n');
  process.exit(2);
}
const io = values.io === 'sync' || values.io === 'async' ? values.io : 'auto';
const exp = await FileExport.open(path, { name: values.name ?? '', description: values.description, readOnly: !values.writable, io });
const server = new NbdServer({
  exports: [exp],
  tls: values['tls-psk-file'] ? { keys: await readPskFile(values['tls-psk-file']) } : undefined,
});
// TCP and a Unix socket at once when both are asked for
const addresses = [];
if (values.socket !== undefined) addresses.push({ path: values.socket });
if (values.port !== undefined || values.socket === undefined) addresses.push({ host: values.host, port: Number(values.port ?? 10809) });
for (const address of addresses) process.stdout.write(`${JSON.stringify(await server.listen(address))}\n`);
const stop = () => {
  void server.close().then(() => exp.close());
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
