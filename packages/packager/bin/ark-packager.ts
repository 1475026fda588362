#!/usr/bin/env node
import { main } from '../src/packager-cli.ts';

await main(process.argv);
