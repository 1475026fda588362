// The entry of an ark-registry worker process (forked by RegistryWorkers).
import { runWorker } from './registry-workers.ts';

await runWorker();
