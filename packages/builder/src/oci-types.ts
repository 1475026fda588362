/** The parts of the OCI image and distribution specs that the builder reads. */
export interface Descriptor {
  mediaType: string;
  digest: string;
  size: number;
  platform?: { architecture: string; os: string; variant?: string };
  annotations?: Record<string, string>;
}

export interface ImageIndex {
  schemaVersion: 2;
  mediaType?: string;
  manifests: Descriptor[];
}

export interface ImageManifest {
  schemaVersion: 2;
  mediaType?: string;
  config: Descriptor;
  layers: Descriptor[];
}

export interface ImageConfig {
  architecture?: string;
  os?: string;
  config?: {
    User?: string;
    Env?: string[] | null;
    Entrypoint?: string[] | null;
    Cmd?: string[] | null;
    WorkingDir?: string;
    ExposedPorts?: Record<string, object> | null;
    Labels?: Record<string, string> | null;
    StopSignal?: string;
  };
  rootfs?: { type: string; diff_ids: string[] };
}

export const mediaTypes = {
  ociIndex: 'application/vnd.oci.image.index.v1+json',
  ociManifest: 'application/vnd.oci.image.manifest.v1+json',
  dockerList: 'application/vnd.docker.distribution.manifest.list.v2+json',
  dockerManifest: 'application/vnd.docker.distribution.manifest.v2+json',
} as const;

export const acceptManifests = [mediaTypes.ociIndex, mediaTypes.ociManifest, mediaTypes.dockerList, mediaTypes.dockerManifest].join(', ');

export function isIndex(value: { mediaType?: string; manifests?: unknown }): value is ImageIndex {
  return value.mediaType === mediaTypes.ociIndex || value.mediaType === mediaTypes.dockerList || Array.isArray(value.manifests);
}

/** linux/amd64 from an index, as Docker picks it on this platform. */
export function pickPlatform(index: ImageIndex): Descriptor | undefined {
  return index.manifests.find((m) => m.platform?.os === 'linux' && m.platform.architecture === 'amd64')
    ?? (index.manifests.length === 1 && !index.manifests[0]?.platform ? index.manifests[0] : undefined);
}
