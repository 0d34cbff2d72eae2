import { defineErrors } from './types.js';

/** Single sign-on to the console with OpenID Connect (enroll-server/console/oidc.ts). */
export const oidcErrors = defineErrors({
  oidc_state_mismatch: {
    status: 400,
    message:
      'The sign-on callback does not belong to a login this browser started: its login cookie is missing or forged, or its state differs.',
    fix: 'Start the login again from the console (/console/oidc/login) in the same browser; cookies must be enabled.',
  },
  oidc_login_expired: {
    status: 400,
    message: 'The sign-on took longer than the 10 minutes a login may take.',
    fix: 'Start the login again from the console (/console/oidc/login).',
  },
  oidc_callback_replayed: {
    status: 400,
    message: 'This sign-on callback was used already: each login completes once.',
    fix: 'Start a new login from the console (/console/oidc/login); do not reload or share the callback address.',
  },
  oidc_callback_invalid: {
    status: 400,
    message:
      "The identity provider's answer did not pass the checks (an error from the provider, a missing, used or expired authorization code, or an ID token that does not verify).",
    fix: "Start the login again; if it keeps failing, the message names the check: compare the provider's client settings (redirect URI, PKCE S256) with the server's oidc config.",
  },
  oidc_login_refused: {
    status: 403,
    message:
      "The identity provider vouched for this person, but the server's oidc mapping gives them no role, no zone or no valid user name.",
    fix: "Ask an admin to add one of the person's role claim values to oidc.roleMap (and a zone to oidc.zoneMap or the zones claim), or to fix oidc.usernameClaim.",
  },
  oidc_provider_unreachable: {
    status: 502,
    message: 'The OpenID Connect provider did not answer (discovery, token or userinfo request).',
    fix: "Check that the server reaches oidc.issuer (DNS, firewall, the provider's TLS certificate) and that the provider is up; then log in again.",
  },
  oidc_provider_invalid: {
    status: 502,
    message:
      "The OpenID Connect provider's discovery document or answers do not conform (issuer mismatch, missing endpoints, unexpected content).",
    fix: "Check oidc.issuer: it must be the provider's exact issuer identifier (its /.well-known/openid-configuration names the same issuer).",
  },
  oidc_client_rejected: {
    status: 502,
    message: "The OpenID Connect provider refused this server's client credentials.",
    fix: 'Compare oidc.clientId and the secret in oidc.clientSecretFile with the client registered at the provider (and its token endpoint auth method client_secret_basic).',
  },
});
