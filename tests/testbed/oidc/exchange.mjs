// OAuth 2.0 Token Exchange (RFC 8693) for the test-bed issuers, as INDIGO IAM and Keycloak
// offer it: a client presents a user's access token and gets a narrower token for one audience.
//
// Issuer-side checks: the client must be allowed the grant and the audience
// (`issuer.exchange`: client_id -> { audience: [allowed scopes] }); every requested scope must
// be allowed for that audience (WLCG storage scopes `storage.read:/path` also cover sub-paths);
// the subject token must be a valid, unexpired access token of this issuer issued to the same
// client. The answer is a JWT access token signed with the issuer's key: `aud` = the audience,
// `scope` = the granted scopes, `sub` = the subject token's, lifetime = the issuer's
// `ttl.exchanged_token` (/__control/settings), else its access token TTL.

import { createPrivateKey, randomBytes, sign } from 'node:crypto';

import { errors } from 'oidc-provider';

export const GRANT_TYPE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const ACCESS_TOKEN_TYPE = 'urn:ietf:params:oauth:token-type:access_token';
const PARAMETERS = ['subject_token', 'subject_token_type', 'audience', 'scope', 'requested_token_type'];

function b64url(value) {
  return Buffer.from(typeof value === 'string' ? value : JSON.stringify(value)).toString('base64url');
}

function signJwt(key, claims) {
  const header = { alg: 'RS256', typ: 'at+jwt', kid: key.kid };
  const input = `${b64url(header)}.${b64url(claims)}`;
  const signature = sign('sha256', Buffer.from(input), createPrivateKey({ key, format: 'jwk' }));
  return `${input}.${signature.toString('base64url')}`;
}

// A requested scope is covered by an allowed one: equal, or the same `name:` with the allowed
// path a prefix of the requested one at a `/` boundary (WLCG token profile).
export function scopeAllowed(requested, allowed) {
  return allowed.some((a) => {
    if (a === requested) return true;
    const i = a.indexOf(':');
    if (i < 0 || !requested.startsWith(a.slice(0, i + 1))) return false;
    const base = a.slice(i + 1).replace(/\/+$/, '');
    const path = requested.slice(i + 1);
    return path.startsWith('/') && (base === '' || path === base || path.startsWith(`${base}/`));
  });
}

function invalid(error, description) {
  return new errors.CustomOIDCProviderError(error, description);
}

export function registerTokenExchange(provider, issuer) {
  provider.registerGrantType(
    GRANT_TYPE,
    async (ctx) => {
      const { params, client } = ctx.oidc;
      const rules = issuer.exchange.get(client.clientId);
      if (!rules) throw invalid('unauthorized_client', 'client may not exchange tokens');
      if (params.subject_token_type !== ACCESS_TOKEN_TYPE) {
        throw new errors.InvalidRequest('subject_token_type must be an access token');
      }
      if (params.requested_token_type && params.requested_token_type !== ACCESS_TOKEN_TYPE) {
        throw new errors.InvalidRequest('only access tokens are issued');
      }
      if (!params.subject_token) throw new errors.InvalidRequest('subject_token is required');
      if (!params.audience) throw new errors.InvalidRequest('audience is required');
      const allowed = rules[params.audience];
      if (!Array.isArray(allowed)) throw invalid('invalid_target', 'audience not allowed for this client');
      const scopes = String(params.scope ?? '').split(' ').filter(Boolean);
      const refused = scopes.filter((s) => !scopeAllowed(s, allowed));
      if (refused.length) throw new errors.InvalidScope('requested scope is not allowed', refused.join(' '));
      const subject = await provider.AccessToken.find(String(params.subject_token));
      if (!subject || subject.isExpired || subject.clientId !== client.clientId) {
        throw new errors.InvalidGrant('subject_token is invalid or expired');
      }
      const now = Math.floor(Date.now() / 1000);
      const ttl = Number(issuer.ttl.exchanged_token ?? issuer.ttl.access_token);
      const claims = {
        iss: issuer.url,
        sub: subject.accountId,
        aud: params.audience,
        scope: scopes.join(' '),
        client_id: client.clientId,
        iat: now,
        nbf: now,
        exp: now + ttl,
        jti: randomBytes(12).toString('base64url'),
        'wlcg.ver': '1.0',
      };
      ctx.body = {
        access_token: signJwt(issuer.keys[0], claims),
        issued_token_type: ACCESS_TOKEN_TYPE,
        token_type: 'Bearer',
        expires_in: ttl,
        scope: claims.scope,
      };
    },
    PARAMETERS,
  );
}
