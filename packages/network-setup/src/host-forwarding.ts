import { readFile, writeFile } from 'node:fs/promises';

const IP_FORWARD = '/proc/sys/net/ipv4/ip_forward';

/** The host's net.ipv4.ip_forward ('0' or '1'). */
export async function readHostIpForward(): Promise<string> {
  return (await readFile(IP_FORWARD, 'utf8')).trim();
}

export async function writeHostIpForward(value: string): Promise<void> {
  await writeFile(IP_FORWARD, `${value}\n`);
}
