#!/usr/bin/env node
import { runAgent } from '../src/run-agent.ts';

await runAgent(process.argv[2]);
