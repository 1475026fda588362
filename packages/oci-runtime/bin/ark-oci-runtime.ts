#!/bin/sh
':' //; exec "${ARK_NODE:-$( [ -x /usr/local/bin/node ] && echo /usr/local/bin/node || echo node )}" "$0" "$@"
// Line 2 is for sh: podman's cleanup runs the runtime with PATH=/usr/sbin:/usr/bin:…, where a distribution's
// older node may come first, so sh starts the Node.js ark runs on (ARK_NODE, else /usr/local/bin/node); for Node it is a no-op.
import { main } from '../src/runtime-cli.ts';

await main(process.argv);
