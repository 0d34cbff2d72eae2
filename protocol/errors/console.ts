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
});
