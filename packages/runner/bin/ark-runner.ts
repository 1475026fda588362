#!/usr/bin/env node
import { main } from '../src/runner-cli.ts';

await main(process.argv);
