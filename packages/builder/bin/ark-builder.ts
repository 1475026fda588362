#!/usr/bin/env node
import { main } from '../src/builder-cli.ts';

await main(process.argv);
