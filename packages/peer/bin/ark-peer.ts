#!/usr/bin/env node
import { main } from '../src/peer-cli.ts';

await main(process.argv);
