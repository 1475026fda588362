export { exportNameFor, packageExports } from './package-exports.ts';
export { defaultAddress, parseAddress } from './registry-cli.ts';
