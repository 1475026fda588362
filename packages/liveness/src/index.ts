export { reportReady } from './report-ready.ts';
