/** The shape of an edgeid-agent subcommand (see agent/cli.ts). */
export interface CommandIo {
  out: NodeJS.WritableStream;
  err: NodeJS.WritableStream;
}

export interface AgentCommand {
  /** First CLI word, e.g. "tpm". */
  name: string;
  /** One line for `edgeid-agent --help`. */
  summary: string;
  /** Runs with the remaining arguments; resolves to the exit code. Throw UsageError for bad arguments. */
  run(args: string[], io: CommandIo): Promise<number>;
}

/** Bad command-line arguments: the CLI prints the message and the command's usage, exit code 2. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly usage: string,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}
