import { readFileSync } from 'node:fs';

export interface ResolvedUser {
  uid: number;
  gid: number;
  home: string;
}

/**
 * Resolves an image's `User` (`uid`, `uid:gid`, `name`, `name:group`, empty for
 * root) through the image's /etc/passwd and /etc/group, as Docker does: a
 * numeric uid needs no passwd entry; a name does.
 */
export function resolveUser(spec: string, etc = '/etc'): ResolvedUser {
  const passwd = readTable(`${etc}/passwd`);
  const group = readTable(`${etc}/group`);
  const [userPart = '', groupPart] = spec.split(':');
  if (userPart === '' && groupPart === undefined) {
    return { uid: 0, gid: 0, home: passwd.find((e) => e[2] === '0')?.[5] ?? '/root' };
  }
  let uid: number;
  let gid: number;
  let home = '/';
  if (/^\d+$/.test(userPart)) {
    uid = Number(userPart);
    const entry = passwd.find((e) => e[2] === userPart);
    gid = entry ? Number(entry[3]) : 0;
    home = entry?.[5] ?? '/';
  } else {
    const entry = passwd.find((e) => e[0] === userPart);
    if (!entry) throw new Error(`unable to find user ${userPart}: no matching entries in passwd file`);
    uid = Number(entry[2]);
    gid = Number(entry[3]);
    home = entry[5] ?? '/';
  }
  if (groupPart !== undefined && groupPart !== '') {
    if (/^\d+$/.test(groupPart)) gid = Number(groupPart);
    else {
      const entry = group.find((e) => e[0] === groupPart);
      if (!entry) throw new Error(`unable to find group ${groupPart}: no matching entries in group file`);
      gid = Number(entry[2]);
    }
  }
  return { uid, gid, home };
}

function readTable(path: string): string[][] {
  try {
    return readFileSync(path, 'utf8').split('\n').filter((line) => line && !line.startsWith('#')).map((line) => line.split(':'));
  } catch {
    return [];
  }
}
