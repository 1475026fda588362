import t from 'tap';
import { isLoopbackRegistry, parseImageReference, parseChallenge } from '@ark/builder';

t.test('Docker defaults: docker.io, library/, latest', async (t) => {
  t.match(parseImageReference('redis'), { kind: 'registry', registry: 'registry-1.docker.io', repository: 'library/redis', tag: 'latest' });
  t.match(parseImageReference('docker://alpine:3.18'), { registry: 'registry-1.docker.io', repository: 'library/alpine', tag: '3.18' });
  t.match(parseImageReference('bitnami/redis:7'), { repository: 'bitnami/redis', tag: '7' });
  t.match(parseImageReference('localhost:5000/app'), { registry: 'localhost:5000', repository: 'app', tag: 'latest' });
  t.match(parseImageReference('127.0.0.1:5000/team/app:v1'), { registry: '127.0.0.1:5000', repository: 'team/app', tag: 'v1' });
  const digest = `sha256:${'a'.repeat(64)}`;
  t.match(parseImageReference(`ghcr.io/o/r@${digest}`), { registry: 'ghcr.io', repository: 'o/r', tag: undefined, digest });
});

t.test('local forms', async (t) => {
  t.match(parseImageReference('oci:/tmp/layout:v2'), { kind: 'oci-layout', dir: '/tmp/layout', tag: 'v2' });
  t.match(parseImageReference('oci:/tmp/layout'), { kind: 'oci-layout', dir: '/tmp/layout', tag: undefined });
  t.match(parseImageReference('docker-archive:/tmp/image.tar'), { kind: 'docker-archive', file: '/tmp/image.tar' });
});

t.test('bad references say what to use', async (t) => {
  t.throws(() => parseImageReference('UPPER/case'), { code: 'BAD_IMAGE_REFERENCE', hint: /name\[:tag/ });
  t.throws(() => parseImageReference('redis@sha256:short'), { code: 'BAD_IMAGE_REFERENCE' });
  t.throws(() => parseImageReference('oci:'), { code: 'BAD_IMAGE_REFERENCE' });
});

t.test('plain HTTP only for loopback', async (t) => {
  t.ok(isLoopbackRegistry('localhost:5000'));
  t.ok(isLoopbackRegistry('127.0.0.1:5000'));
  t.ok(isLoopbackRegistry('127.1.2.3'));
  t.notOk(isLoopbackRegistry('registry-1.docker.io'));
  t.notOk(isLoopbackRegistry('127.example.com'));
});

t.test('bearer challenges', async (t) => {
  t.same(parseChallenge('realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/redis:pull"'), {
    realm: 'https://auth.docker.io/token', service: 'registry.docker.io', scope: 'repository:library/redis:pull',
  });
});
