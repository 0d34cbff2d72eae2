/** One entry of the error registry: the HTTP status a server answers with, a human message and the fix. */
export interface ErrorInfo {
  /** HTTP status the server answers with; 4xx for the caller's fault, 5xx only for our own. */
  status: number;
  /** What went wrong, in words an operator or technician understands. */
  message: string;
  /** What to do about it. */
  fix: string;
}

export type ErrorTable = Record<string, ErrorInfo>;

/** Helper so each domain file keeps its literal keys (for the ErrorCode union) while being checked. */
export function defineErrors<T extends ErrorTable>(table: T): T {
  return table;
}
