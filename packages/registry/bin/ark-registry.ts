#!/usr/bin/env node
import { main } from '../src/registry-cli.ts';

await main(process.argv);
