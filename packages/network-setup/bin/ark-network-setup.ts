#!/usr/bin/env node
import { runCli } from '@ark/cli';
import { createCli } from '../src/cli.ts';

await runCli(createCli());
