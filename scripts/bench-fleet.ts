/**
 * `scripts/bench fleet`: a fleet renewing on schedule against one server; the load client and the
 * report are scripts/bench-server.ts's `--fleet` mode (its header lists the options).
 */
process.argv.push('--fleet');
await import('./bench-server.js');
