#!/usr/bin/env node
import { runCli } from '@ark/cli';
import { createCli, integerOptions } from '../src/cli.ts';

await runCli(createCli(), process.argv, { integerOptions });
