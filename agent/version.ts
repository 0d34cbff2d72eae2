import { readFileSync } from 'node:fs';

/** Replaced by a string literal when scripts/bundle.mjs builds the agent. */
declare const EDGEID_AGENT_VERSION: string | undefined;
/** True in the esbuild bundle. */
declare const EDGEID_BUNDLED: boolean | undefined;

function versionFromPackageJson(): string {
  try {
    const pkg = JSON.parse(readFileSync(new URL('../package.json', import.meta.url), 'utf8')) as { version?: string };
    return pkg.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

export const AGENT_VERSION: string = typeof EDGEID_AGENT_VERSION === 'string' ? EDGEID_AGENT_VERSION : versionFromPackageJson();
export const IS_BUNDLED: boolean = typeof EDGEID_BUNDLED === 'boolean' ? EDGEID_BUNDLED : false;
