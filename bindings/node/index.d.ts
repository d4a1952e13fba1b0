/** Where and how to run the `spotoken` executable. */
export interface Options {
  /** Account name; default: spotoken's default account (SPOTOKEN_ACCOUNT, config, "default"). */
  account?: string;
  /** Path or name of the executable; default "spotoken" from PATH. */
  executable?: string;
  /** spotoken's home (--home); default: SPOTOKEN_HOME or the platform's data dir. */
  home?: string;
  /** Milliseconds before a call fails with TemporaryFailure; default 60000. */
  timeout?: number;
}

export interface TokenOptions extends Options {
  /** Validity the token must still have: seconds, or "90s", "5m", "2h". Default five minutes. */
  minValid?: number | string;
}

/** What `spotoken token --output json` prints. */
export interface TokenInfo {
  account: string;
  access_token: string;
  token_type: "Bearer";
  /** Unix seconds. */
  expires_at: number;
  expires_in: number;
  scopes: string[];
}

export function getAccessToken(opts?: TokenOptions): Promise<string>;
export function getTokenInfo(opts?: TokenOptions): Promise<TokenInfo>;
export function getStatus(opts?: Omit<Options, "account">): Promise<{
  store: string;
  default_account: string;
  accounts: Array<Record<string, unknown> & { account: string; state: string }>;
}>;
export function checkScope(method: string, path: string, opts?: Options): Promise<void>;
export function errorFor(code: number | null, signal: string | null, stderr: string): SpotokenError;

export class SpotokenError extends Error {
  exitCode: number;
}
export class ConfigurationError extends SpotokenError {}
export class ExecutableNotFound extends ConfigurationError {}
export class AuthorizationNeeded extends SpotokenError {}
export class TemporaryFailure extends SpotokenError {
  /** Seconds the server asked to wait, or null. */
  retryAfter: number | null;
}
export class RateLimited extends TemporaryFailure {
  retryAfter: number;
}
export class InsufficientScope extends SpotokenError {
  missingScopes: string[];
}
export class UnexpectedFailure extends SpotokenError {}
