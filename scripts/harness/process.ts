/** Child processes of the harness: how they are stopped. */
import type { ChildProcess } from 'node:child_process';

/**
 * Stops a child: SIGTERM, then SIGKILL if it is still running after `graceMs`; resolves once it
 * exited. Idempotent (an exited child, or null, resolves at once).
 */
export function stopChild(child: ChildProcess | null | undefined, graceMs = 5000): Promise<void> {
  if (!child || child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const t = setTimeout(() => child.kill('SIGKILL'), graceMs);
    child.once('exit', () => {
      clearTimeout(t);
      resolve();
    });
    child.kill('SIGTERM');
  });
}
