import { readFileSync } from 'node:fs';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { dockerHubRegistry } from './image-reference.ts';

export interface Credentials {
  username: string;
  password: string;
}

/** Reads `auths` from ~/.docker/config.json (or $DOCKER_CONFIG/config.json). */
export function readDockerCredentials(registry: string, configDir: string = process.env.DOCKER_CONFIG ?? join(homedir(), '.docker')): Credentials | undefined {
  let config: { auths?: Record<string, { auth?: string; username?: string; password?: string }> };
  try {
    config = JSON.parse(readFileSync(join(configDir, 'config.json'), 'utf8'));
  } catch {
    return undefined;
  }
  const keys = registry === dockerHubRegistry ? ['https://index.docker.io/v1/', 'index.docker.io', 'docker.io', registry] : [registry, `https://${registry}`, `http://${registry}`];
  for (const key of keys) {
    const entry = config.auths?.[key] ?? config.auths?.[`${key}/`];
    if (!entry) continue;
    if (entry.auth) {
      const decoded = Buffer.from(entry.auth, 'base64').toString('utf8');
      const colon = decoded.indexOf(':');
      if (colon > 0) return { username: decoded.slice(0, colon), password: decoded.slice(colon + 1) };
    }
    if (entry.username && entry.password) return { username: entry.username, password: entry.password };
  }
  return undefined;
}
