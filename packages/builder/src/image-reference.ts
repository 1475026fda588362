import { ArkError, ExitCode } from '@ark/cli';

export type ImageReference =
  | { kind: 'registry'; registry: string; repository: string; tag: string | undefined; digest: string | undefined; text: string }
  | { kind: 'oci-layout'; dir: string; tag: string | undefined; text: string }
  | { kind: 'docker-archive'; file: string; text: string };

export const dockerHubRegistry = 'registry-1.docker.io';

/**
 * Parses `[docker://]name[:tag|@digest]` (Docker's defaults: docker.io and
 * `library/`), `oci:DIR[:TAG]` and `docker-archive:FILE`.
 */
export function parseImageReference(text: string): ImageReference {
  if (text.startsWith('oci:')) {
    const rest = text.slice(4);
    const colon = rest.lastIndexOf(':');
    // a colon inside the directory path is part of it unless what follows looks like a tag
    if (colon > 0 && /^[\w][\w.-]{0,127}$/.test(rest.slice(colon + 1))) {
      return { kind: 'oci-layout', dir: rest.slice(0, colon), tag: rest.slice(colon + 1), text };
    }
    if (rest === '') throw badReference(text, 'oci: needs a directory');
    return { kind: 'oci-layout', dir: rest, tag: undefined, text };
  }
  if (text.startsWith('docker-archive:')) {
    const file = text.slice('docker-archive:'.length);
    if (file === '') throw badReference(text, 'docker-archive: needs a file');
    return { kind: 'docker-archive', file, text };
  }
  let rest = text.startsWith('docker://') ? text.slice('docker://'.length) : text;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!/^sha256:[a-f0-9]{64}$/.test(digest)) throw badReference(text, `'${digest}' is not a sha256 digest`);
  }
  let tag: string | undefined;
  const lastSlash = rest.lastIndexOf('/');
  const lastColon = rest.lastIndexOf(':');
  if (lastColon > lastSlash) {
    tag = rest.slice(lastColon + 1);
    rest = rest.slice(0, lastColon);
    if (!/^[\w][\w.-]{0,127}$/.test(tag)) throw badReference(text, `'${tag}' is not a valid tag`);
  }
  const parts = rest.split('/');
  let registry = 'docker.io';
  const first = parts[0] ?? '';
  if (parts.length > 1 && (first.includes('.') || first.includes(':') || first === 'localhost')) {
    registry = first;
    parts.shift();
  }
  let repository = parts.join('/');
  if (!/^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*(?:\/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*$/.test(repository)) {
    throw badReference(text, `'${repository}' is not a valid repository name (lower case letters, digits, . _ - and /)`);
  }
  if (registry === 'docker.io' || registry === 'index.docker.io') {
    registry = dockerHubRegistry;
    if (!repository.includes('/')) repository = `library/${repository}`;
  }
  if (tag === undefined && digest === undefined) tag = 'latest';
  return { kind: 'registry', registry, repository, tag, digest, text };
}

function badReference(text: string, why: string): ArkError {
  return new ArkError('BAD_IMAGE_REFERENCE', `'${text}' is not an image reference: ${why}`, {
    hint: 'use name[:tag|@digest], docker://host/name:tag, oci:DIR[:TAG] or docker-archive:FILE',
    exitCode: ExitCode.usage,
  });
}

/** Plain HTTP is allowed only for loopback registries (as Docker does) unless --insecure. */
export function isLoopbackRegistry(registry: string): boolean {
  const host = registry.startsWith('[') ? registry.slice(1, registry.indexOf(']')) : registry.split(':')[0] ?? '';
  return host === 'localhost' || host === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(host);
}
