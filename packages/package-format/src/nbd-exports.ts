// Serving members over NBD, chunk-verified (ark-registry, and ark-runner for
// a package it does not trust yet). A subpath of its own: it loads @ark/nbd,
// which what only reads and writes packages does not need.
export { MemberVerifier } from './member-verifier.ts';
export { VerifiedExport, memberHoles, verifiedMemberExport } from './verified-export.ts';
