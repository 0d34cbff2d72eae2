import { defineErrors } from './types.js';

/** Codes of the web console's listener (enroll-server/console/): its session, CSRF and login checks. */
export const consoleErrors = defineErrors({
  console_unauthenticated: {
    status: 401,
    message: 'The console request has no valid session: never logged in, logged out, or the session timed out.',
    fix: 'Log in again at /console/ with a personal token.',
  },
  console_session_ended: {
    status: 401,
    message: 'The console session ended because its user was disabled, expired or had its token rotated since the login.',
    fix: 'Log in again with the current personal token (edgeid-admin users rotate-token prints a new one).',
  },
  csrf_failed: {
    status: 403,
    message: "A state-changing console request came without the session's X-CSRF-Token, with a wrong one, or from another origin.",
    fix: 'Use the console page itself; scripts use the API at /v1/admin with a bearer token instead.',
  },
  console_login_failed: {
    status: 401,
    message: 'The console login was refused: the token is not a valid personal token, or its user is disabled or expired.',
    fix: 'Paste the personal token edgeid-admin users add / rotate-token printed.',
  },
  token_not_found: {
    status: 404,
    message: "No enrollment token with this id (in the caller's zones).",
    fix: "List the tokens (edgeid-admin token list, or the console's tokens page) and use an id from there.",
  },
  token_not_expirable: {
    status: 409,
    message: 'The enrollment token was used or has expired already; there is nothing to expire.',
    fix: 'None needed: a used or expired token enrolls nothing. Revoke the device it enrolled if that is the concern.',
  },
});
