export { MemberHasher, dataExtents, hashChunkBytes, indexMemberName, isZeroRange, memberAlignment, memberNames, packageFormatVersion, zeroBlockSize } from './package-index.ts';
export type { MemberEntry, MemberName, PackageIndex } from './package-index.ts';
export { writePackage } from './package-writer.ts';
export type { MemberSource, WritePackageOptions } from './package-writer.ts';
export { ArkPackage, memberDigest } from './package-reader.ts';
export { ensurePackageVerified } from './package-trust.ts';
export type { MemberRange, RangesSource } from './member-ranges.ts';
