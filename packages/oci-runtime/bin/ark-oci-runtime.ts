#!/usr/bin/env node
import { main } from '../src/runtime-cli.ts';

await main(process.argv);
