// Real OpenID Connect issuers for the jupyterhub-af test bed.
//
// One node process, one loopback HTTP server, several `oidc-provider` issuers mounted under
// path prefixes (CERN-like `/auth/realms/cern`, INDIGO-IAM-like `/iam`, CILogon-like
// `/cilogon`). Users, clients and token lifetimes come from a JSON file written by
// tests/testbed/oidc/provider.py; `/__control/*` lets tests rotate signing keys, register clients and
// change users while the process runs.
//
// Usage: node server.mjs --config CONFIG.json [--port N] [--exit-with-stdin]
//        (or OIDC_TESTBED_CONFIG / OIDC_TESTBED_PORT). Port 0 picks a free port.
// Prints exactly one line `READY <port>` on stdout once every issuer is served.

import { generateKeyPair, randomBytes, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { promisify } from 'node:util';

import Provider from 'oidc-provider';

import { GRANT_TYPE, registerTokenExchange } from './exchange.mjs';

const HOST = '127.0.0.1';
const MAX_BODY = 256 * 1024;

// ---------------------------------------------------------------------------------------------
// Issuer profiles: where each kind of IdP lives, its endpoint layout and which scope releases
// which claim. Mirrors the real services closely enough that a relying party must use
// discovery and request the right scopes.
// ---------------------------------------------------------------------------------------------

const PROFILES = {
  cern: {
    path: '/auth/realms/cern',
    displayName: 'CERN Single Sign-On (test bed)',
    routes: {
      authorization: '/protocol/openid-connect/auth',
      token: '/protocol/openid-connect/token',
      userinfo: '/protocol/openid-connect/userinfo',
      jwks: '/protocol/openid-connect/certs',
      end_session: '/protocol/openid-connect/logout',
      revocation: '/protocol/openid-connect/revoke',
      introspection: '/protocol/openid-connect/token/introspect',
    },
    // Keycloak's CERN realm adds the cern_* claims and client roles through default client
    // scopes, i.e. they come with a plain `openid` request.
    claims: {
      openid: ['sub', 'cern_upn', 'cern_person_id', 'cern_roles', 'resource_access'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username'],
      email: ['email', 'email_verified'],
    },
  },
  iam: {
    path: '/iam',
    displayName: 'INDIGO IAM (test bed)',
    routes: {
      authorization: '/authorize',
      token: '/token',
      userinfo: '/userinfo',
      jwks: '/jwk',
      end_session: '/logout',
      revocation: '/revoke',
      introspection: '/introspect',
    },
    claims: {
      openid: ['sub', 'wlcg.ver'],
      profile: ['name', 'given_name', 'family_name', 'preferred_username', 'groups'],
      email: ['email', 'email_verified'],
      wlcg: ['wlcg.ver'],
      'wlcg.groups': ['wlcg.groups'],
      eduperson_entitlement: ['eduperson_entitlement'],
    },
  },
  cilogon: {
    path: '/cilogon',
    displayName: 'CILogon (test bed)',
    routes: {
      authorization: '/authorize',
      token: '/oauth2/token',
      userinfo: '/oauth2/userinfo',
      jwks: '/oauth2/certs',
      end_session: '/logout',
      revocation: '/oauth2/revoke',
      introspection: '/oauth2/introspect',
    },
    claims: {
      openid: ['sub'],
      profile: ['name', 'given_name', 'family_name'],
      email: ['email', 'email_verified'],
      'org.cilogon.userinfo': ['idp', 'idp_name', 'eppn', 'eptid', 'affiliation', 'ou'],
    },
  },
};

const DEFAULT_TTL = {
  access_token: 3600,
  id_token: 3600,
  refresh_token: 14 * 24 * 3600,
  authorization_code: 120,
  session: 14 * 24 * 3600,
  interaction: 3600,
};

// ---------------------------------------------------------------------------------------------
// Storage: one store per issuer that outlives Provider instances, so that a rebuilt provider
// (new signing key, new client) still knows every session, grant and refresh token.
// ---------------------------------------------------------------------------------------------

class Store {
  #entries = new Map();

  get(key) {
    const entry = this.#entries.get(key);
    if (entry === undefined) return undefined;
    if (entry.expiresAt !== undefined && entry.expiresAt <= Date.now()) {
      this.#entries.delete(key);
      return undefined;
    }
    return entry.value;
  }

  set(key, value, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    this.#entries.set(key, { value, expiresAt });
  }

  delete(key) {
    this.#entries.delete(key);
  }

  *valuesOf(model) {
    const prefix = `${model}:`;
    for (const key of [...this.#entries.keys()]) {
      if (key.startsWith(prefix)) {
        const value = this.get(key);
        if (value !== undefined) yield [key.slice(prefix.length), value];
      }
    }
  }
}

function adapterFor(store) {
  return class StoreAdapter {
    constructor(model) {
      this.model = model;
    }

    key(id) {
      return `${this.model}:${id}`;
    }

    async upsert(id, payload, expiresIn) {
      store.set(this.key(id), payload, expiresIn);
      if (this.model === 'Session' && payload.uid) {
        store.set(`sessionUid:${payload.uid}`, id, expiresIn);
      }
      if (payload.userCode) {
        store.set(`userCode:${payload.userCode}`, id, expiresIn);
      }
      if (payload.grantId) {
        const members = store.get(`grant:${payload.grantId}`) ?? new Set();
        members.add(this.key(id));
        store.set(`grant:${payload.grantId}`, members);
      }
    }

    async find(id) {
      return store.get(this.key(id));
    }

    async findByUid(uid) {
      const id = store.get(`sessionUid:${uid}`);
      return id === undefined ? undefined : this.find(id);
    }

    async findByUserCode(userCode) {
      const id = store.get(`userCode:${userCode}`);
      return id === undefined ? undefined : this.find(id);
    }

    async consume(id) {
      const payload = store.get(this.key(id));
      if (payload) payload.consumed = Math.floor(Date.now() / 1000);
    }

    async destroy(id) {
      store.delete(this.key(id));
    }

    async revokeByGrantId(grantId) {
      for (const key of store.get(`grant:${grantId}`) ?? []) store.delete(key);
      store.delete(`grant:${grantId}`);
    }
  };
}

// ---------------------------------------------------------------------------------------------
// Issuer state and Provider construction
// ---------------------------------------------------------------------------------------------

const generateKeyPairAsync = promisify(generateKeyPair);

async function newSigningKey(name) {
  const { privateKey } = await generateKeyPairAsync('rsa', { modulusLength: 2048 });
  const jwk = privateKey.export({ format: 'jwk' });
  return { ...jwk, kid: `${name}-${randomBytes(6).toString('base64url')}`, alg: 'RS256', use: 'sig' };
}

function escapeHtml(value) {
  return String(value ?? '')
    .replaceAll('&', '&amp;')
    .replaceAll('<', '&lt;')
    .replaceAll('>', '&gt;')
    .replaceAll('"', '&quot;')
    .replaceAll("'", '&#39;');
}

function safeEqual(a, b) {
  const left = Buffer.from(String(a));
  const right = Buffer.from(String(b));
  return left.length === right.length && timingSafeEqual(left, right);
}

function normaliseClient(client) {
  if (!client || typeof client.client_id !== 'string' || !client.client_id) {
    throw new HttpError(400, 'client needs a client_id');
  }
  const metadata = {
    grant_types: ['authorization_code', 'refresh_token'],
    response_types: ['code'],
    ...client,
  };
  if (!metadata.client_secret && !metadata.token_endpoint_auth_method) {
    metadata.token_endpoint_auth_method = 'none';
  }
  return metadata;
}

class HttpError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

class Issuer {
  constructor(name, cfg, origin) {
    const profileName = cfg.profile ?? name;
    const profile = PROFILES[profileName];
    if (!profile) {
      throw new Error(`issuer ${name}: unknown profile ${profileName} (known: ${Object.keys(PROFILES)})`);
    }
    this.name = name;
    this.profile = profileName;
    this.path = (cfg.path ?? profile.path).replace(/\/+$/, '');
    if (!this.path.startsWith('/') || this.path.startsWith('/__control')) {
      throw new Error(`issuer ${name}: path must start with / and not be /__control`);
    }
    this.url = `${origin}${this.path}`;
    this.displayName = cfg.display_name ?? profile.displayName;
    this.routes = { ...profile.routes, ...(cfg.routes ?? {}) };
    this.claims = cfg.claims_by_scope ?? profile.claims;
    this.ttl = { ...DEFAULT_TTL, ...(cfg.ttl ?? {}) };
    this.pkceRequired = cfg.pkce_required ?? true;
    this.rotateRefreshToken = cfg.rotate_refresh_token ?? true;
    this.clients = new Map((cfg.clients ?? []).map((c) => [c.client_id, normaliseClient(c)]));
    this.users = new Map(Object.entries(cfg.users ?? {}).map(([u, v]) => [u, this.#user(u, v)]));
    // token exchange (exchange.mjs): client_id -> { audience: [allowed scopes] }
    this.exchange = new Map(Object.entries(cfg.token_exchange ?? {}));
    for (const clientId of this.exchange.keys()) this.allowExchange(clientId);
    this.cookieSuffix = name.replace(/[^A-Za-z0-9]/g, '_');
    this.cookieKeys = [randomBytes(32).toString('base64url')];
    this.store = new Store();
    this.keys = [];
    this.provider = undefined;
    this.handler = undefined;
  }

  #user(username, value) {
    if (!value || typeof value.password !== 'string' || !value.password) {
      throw new HttpError(400, `user ${username} needs a non-empty password`);
    }
    return { username, password: value.password, sub: String(value.sub ?? username), claims: value.claims ?? {} };
  }

  allowExchange(clientId) {
    const client = this.clients.get(clientId);
    if (client && !client.grant_types.includes(GRANT_TYPE)) {
      client.grant_types = [...client.grant_types, GRANT_TYPE];
    }
  }

  setUser(username, value) {
    this.users.set(username, this.#user(username, value));
  }

  userBySub(sub) {
    for (const user of this.users.values()) if (user.sub === sub) return user;
    return undefined;
  }

  async rotateKey() {
    this.keys = [await newSigningKey(this.name)];
    this.rebuild();
    return this.keys[0].kid;
  }

  rebuild() {
    const issuer = this;
    const provider = new Provider(this.url, {
      adapter: adapterFor(this.store),
      clients: [...this.clients.values()],
      jwks: { keys: this.keys },
      cookies: {
        keys: this.cookieKeys,
        names: {
          session: `_session_${this.cookieSuffix}`,
          interaction: `_interaction_${this.cookieSuffix}`,
          resume: `_interaction_resume_${this.cookieSuffix}`,
        },
      },
      claims: this.claims,
      conformIdTokenClaims: false,
      responseTypes: ['code'],
      routes: this.routes,
      features: {
        devInteractions: { enabled: false },
        revocation: { enabled: true },
        introspection: { enabled: true },
        rpInitiatedLogout: { enabled: true },
        userinfo: { enabled: true },
      },
      pkce: { required: () => issuer.pkceRequired },
      // Refresh tokens for every client allowed the grant, with or without offline_access
      // (oidc-provider drops offline_access unless prompt=consent is sent).
      issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
      rotateRefreshToken: () => issuer.rotateRefreshToken,
      ttl: {
        AccessToken: this.ttl.access_token,
        IdToken: this.ttl.id_token,
        RefreshToken: this.ttl.refresh_token,
        AuthorizationCode: this.ttl.authorization_code,
        Session: this.ttl.session,
        Grant: this.ttl.session,
        Interaction: this.ttl.interaction,
      },
      interactions: {
        url: (_ctx, interaction) => `${issuer.path}/interaction/${interaction.uid}`,
      },
      async findAccount(_ctx, sub) {
        const user = issuer.userBySub(sub);
        if (!user) return undefined;
        return {
          accountId: sub,
          async claims() {
            // Read at every use so claim changes show up on the next token refresh.
            const current = issuer.userBySub(sub) ?? user;
            return { ...current.claims, sub };
          },
        };
      },
      async renderError(ctx, out) {
        ctx.type = 'html';
        ctx.body = page(issuer, 'Error', `<h1>Sign-in error</h1>
<p class="error" role="alert"><code>${escapeHtml(out.error)}</code>: ${escapeHtml(out.error_description)}</p>`);
      },
    });
    registerTokenExchange(provider, this);
    provider.on('server_error', (_ctx, err) => console.error(`[${this.name}] server_error`, err));
    this.provider = provider;
    this.handler = provider.callback();
  }

  // Static clients are only checked when first used; check them now to fail loudly.
  async validateClients() {
    for (const clientId of this.clients.keys()) {
      try {
        const client = await this.provider.Client.find(clientId);
        if (!client) throw new Error('not loaded');
      } catch (err) {
        throw new Error(`issuer ${this.name}: client ${clientId}: ${err.error_description ?? err.message}`);
      }
    }
  }

  state() {
    return {
      issuer: this.url,
      path: this.path,
      profile: this.profile,
      kids: this.keys.map((k) => k.kid),
      clients: [...this.clients.keys()],
      users: [...this.users.keys()],
      ttl: this.ttl,
      pkce_required: this.pkceRequired,
      rotate_refresh_token: this.rotateRefreshToken,
      token_exchange: Object.fromEntries(this.exchange),
    };
  }
}

// ---------------------------------------------------------------------------------------------
// Login page (the interaction endpoint of every issuer)
// ---------------------------------------------------------------------------------------------

function page(issuer, title, body) {
  return `<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>${escapeHtml(title)} · ${escapeHtml(issuer.displayName)}</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 26rem; margin: 3rem auto; padding: 0 1rem; }
  label { display: block; margin-top: 0.8rem; }
  input { width: 100%; padding: 0.4rem; box-sizing: border-box; }
  button { margin-top: 1rem; padding: 0.5rem 1.2rem; }
  .error { color: #a00; }
  .muted { color: #666; font-size: 0.9em; }
</style>
</head>
<body>
<p class="muted">${escapeHtml(issuer.displayName)}</p>
${body}
</body>
</html>`;
}

function loginPage(issuer, interaction, { username = '', error = '' } = {}) {
  const base = `${issuer.path}/interaction/${encodeURIComponent(interaction.uid)}`;
  const client = escapeHtml(interaction.params.client_id);
  const scope = escapeHtml(interaction.params.scope);
  const errorHtml = error ? `<p class="error" id="login-error" role="alert">${escapeHtml(error)}</p>` : '';
  return page(issuer, 'Sign in', `<h1>Sign in</h1>
<p>to continue to <strong>${client}</strong> <span class="muted">(scope: ${scope})</span></p>
${errorHtml}
<form id="login-form" method="post" action="${base}/login" autocomplete="off">
  <label for="username">Username</label>
  <input id="username" name="username" type="text" value="${escapeHtml(username)}" required autofocus>
  <label for="password">Password</label>
  <input id="password" name="password" type="password" required>
  <button id="sign-in" type="submit">Sign in</button>
</form>
<form id="abort-form" method="post" action="${base}/abort">
  <button id="cancel" type="submit">Cancel</button>
</form>`);
}

function sendHtml(res, status, html) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  res.setHeader('Cache-Control', 'no-store');
  res.end(html);
}

function sendJson(res, status, value) {
  res.statusCode = status;
  res.setHeader('Content-Type', 'application/json');
  res.setHeader('Cache-Control', 'no-store');
  res.end(`${JSON.stringify(value)}\n`);
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw new HttpError(413, 'request body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function grantConsent(provider, interaction) {
  const { details } = interaction.prompt;
  const grant = interaction.grantId
    ? await provider.Grant.find(interaction.grantId)
    : new provider.Grant({ accountId: interaction.session.accountId, clientId: interaction.params.client_id });
  if (details.missingOIDCScope) grant.addOIDCScope(details.missingOIDCScope.join(' '));
  if (details.missingOIDCClaims) grant.addOIDCClaims(details.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(details.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  return interaction.grantId ? {} : { grantId };
}

async function handleInteraction(issuer, rest, req, res) {
  const match = /^\/interaction\/([^/]+)(\/login|\/abort)?$/.exec(rest);
  if (!match) throw new HttpError(404, 'no such interaction route');
  const uid = decodeURIComponent(match[1]);
  const action = match[2] ?? '';
  const { provider } = issuer;

  let interaction;
  try {
    interaction = await provider.interactionDetails(req, res);
  } catch (err) {
    sendHtml(res, 400, page(issuer, 'Sign-in expired', `<h1>Sign-in expired</h1>
<p class="error" role="alert">${escapeHtml(err.message)}. Go back to the application and start again.</p>`));
    return;
  }
  if (interaction.uid !== uid) throw new HttpError(400, 'interaction does not match this browser session');
  const prompt = interaction.prompt.name;

  if (action === '' && req.method === 'GET') {
    if (prompt === 'login') {
      sendHtml(res, 200, loginPage(issuer, interaction, { username: interaction.params.login_hint ?? '' }));
      return;
    }
    if (prompt === 'consent') {
      // Test-bed users always consent: grant what was asked and go straight back.
      const consent = await grantConsent(provider, interaction);
      await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
      return;
    }
    throw new HttpError(400, `unsupported prompt ${prompt}`);
  }

  if (action === '/login' && req.method === 'POST') {
    const form = new URLSearchParams(await readBody(req));
    const username = form.get('username') ?? '';
    const password = form.get('password') ?? '';
    const user = issuer.users.get(username);
    if (prompt !== 'login') throw new HttpError(400, 'this sign-in step does not take a password');
    if (!user || !password || !safeEqual(password, user.password)) {
      sendHtml(res, 401, loginPage(issuer, interaction, { username, error: 'Invalid username or password.' }));
      return;
    }
    await provider.interactionFinished(
      req,
      res,
      { login: { accountId: user.sub, amr: ['pwd'] } },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  if (action === '/abort' && req.method === 'POST') {
    await provider.interactionFinished(
      req,
      res,
      { error: 'access_denied', error_description: 'End-User aborted interaction' },
      { mergeWithLastSubmission: false },
    );
    return;
  }

  throw new HttpError(405, 'method not allowed');
}

// ---------------------------------------------------------------------------------------------
// Control API (loopback only): /__control/*
// ---------------------------------------------------------------------------------------------

function isLoopback(address) {
  return address === '::1' || /^(::ffff:)?127\./.test(address ?? '');
}

async function handleControl(issuers, url, req, res) {
  if (!isLoopback(req.socket.remoteAddress)) throw new HttpError(403, 'control API is loopback only');
  const route = url.pathname.slice('/__control'.length);

  if (route === '/health' && req.method === 'GET') {
    sendJson(res, 200, { ok: true, issuers: Object.fromEntries([...issuers].map(([n, i]) => [n, i.url])) });
    return;
  }
  if (route === '/state' && req.method === 'GET') {
    sendJson(res, 200, { issuers: Object.fromEntries([...issuers].map(([n, i]) => [n, i.state()])) });
    return;
  }
  if (req.method !== 'POST') throw new HttpError(405, 'method not allowed');

  const name = url.searchParams.get('issuer');
  const issuer = issuers.get(name ?? '');
  if (!issuer) throw new HttpError(404, `unknown issuer ${name} (known: ${[...issuers.keys()]})`);
  const raw = await readBody(req);
  let body = {};
  if (raw.trim()) {
    try {
      body = JSON.parse(raw);
    } catch {
      throw new HttpError(400, 'body must be JSON');
    }
  }

  switch (route) {
    case '/rotate-keys': {
      const previous = issuer.keys.map((k) => k.kid);
      const kid = await issuer.rotateKey();
      sendJson(res, 200, { issuer: issuer.url, kid, previous });
      return;
    }
    case '/clients': {
      const client = normaliseClient(body);
      const old = issuer.clients.get(client.client_id);
      issuer.clients.set(client.client_id, client);
      if (issuer.exchange.has(client.client_id)) issuer.allowExchange(client.client_id);
      try {
        issuer.rebuild();
        await issuer.validateClients();
      } catch (err) {
        if (old) issuer.clients.set(client.client_id, old);
        else issuer.clients.delete(client.client_id);
        issuer.rebuild();
        throw new HttpError(400, `invalid client: ${err.message}`);
      }
      sendJson(res, 200, { issuer: issuer.url, client_id: client.client_id });
      return;
    }
    case '/token-exchange': {
      // body: { client_id, audiences: { audience: [allowed scopes] } } (empty: no exchange)
      if (typeof body.client_id !== 'string' || !issuer.clients.has(body.client_id)) {
        throw new HttpError(400, 'client_id of a known client required');
      }
      issuer.exchange.set(body.client_id, body.audiences ?? {});
      issuer.allowExchange(body.client_id);
      issuer.rebuild();
      await issuer.validateClients();
      sendJson(res, 200, issuer.state());
      return;
    }
    case '/users': {
      if (typeof body.username !== 'string' || !body.username) throw new HttpError(400, 'username required');
      issuer.setUser(body.username, body);
      sendJson(res, 200, { issuer: issuer.url, username: body.username });
      return;
    }
    case '/settings': {
      if (body.ttl) issuer.ttl = { ...issuer.ttl, ...body.ttl };
      if (typeof body.pkce_required === 'boolean') issuer.pkceRequired = body.pkce_required;
      if (typeof body.rotate_refresh_token === 'boolean') issuer.rotateRefreshToken = body.rotate_refresh_token;
      issuer.rebuild();
      sendJson(res, 200, issuer.state());
      return;
    }
    case '/revoke-grants': {
      // Revoke every grant (and so its refresh/access tokens) and session of one user, as
      // when an account is suspended at the IdP.
      const user = issuer.users.get(body.username ?? '');
      if (!user) throw new HttpError(404, `unknown user ${body.username}`);
      const Adapter = adapterFor(issuer.store);
      let revoked = 0;
      for (const [grantId, grant] of issuer.store.valuesOf('Grant')) {
        if (grant.accountId === user.sub) {
          await new Adapter('Grant').revokeByGrantId(grantId);
          await new Adapter('Grant').destroy(grantId);
          revoked += 1;
        }
      }
      for (const [sessionId, session] of issuer.store.valuesOf('Session')) {
        if (session.accountId === user.sub) await new Adapter('Session').destroy(sessionId);
      }
      sendJson(res, 200, { issuer: issuer.url, username: user.username, revoked_grants: revoked });
      return;
    }
    default:
      throw new HttpError(404, `unknown control route ${route}`);
  }
}

// ---------------------------------------------------------------------------------------------
// Main
// ---------------------------------------------------------------------------------------------

function parseArgs(argv) {
  const args = { config: process.env.OIDC_TESTBED_CONFIG, port: process.env.OIDC_TESTBED_PORT, exitWithStdin: false };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--config') args.config = argv[(i += 1)];
    else if (arg === '--port') args.port = argv[(i += 1)];
    else if (arg === '--exit-with-stdin') args.exitWithStdin = true;
    else if (!arg.startsWith('--') && args.config === undefined) args.config = arg;
    else throw new Error(`unknown argument ${arg}`);
  }
  if (!args.config) {
    throw new Error('usage: node server.mjs --config CONFIG.json [--port N] [--exit-with-stdin]');
  }
  return args;
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  const config = JSON.parse(readFileSync(args.config, 'utf8'));
  const port = Number(args.port ?? config.port ?? 0);
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new Error(`bad port ${args.port}`);

  const issuers = new Map();
  let prefixes = [];

  const server = createServer(async (req, res) => {
    try {
      const url = new URL(req.url ?? '/', `http://${HOST}`);
      if (url.pathname === '/__control' || url.pathname.startsWith('/__control/')) {
        await handleControl(issuers, url, req, res);
        return;
      }
      for (const issuer of prefixes) {
        if (url.pathname === issuer.path || url.pathname.startsWith(`${issuer.path}/`)) {
          const rest = url.pathname.slice(issuer.path.length) || '/';
          if (rest.startsWith('/interaction/')) {
            await handleInteraction(issuer, rest, req, res);
            return;
          }
          // Mount the provider under its issuer path (express-style baseUrl).
          req.baseUrl = issuer.path;
          req.url = req.url.slice(issuer.path.length) || '/';
          await issuer.handler(req, res);
          return;
        }
      }
      throw new HttpError(404, 'not found');
    } catch (err) {
      const status = err instanceof HttpError ? err.status : 500;
      if (status === 500) console.error('request failed', err);
      if (!res.headersSent) sendJson(res, status, { error: err.message });
      else res.end();
    }
  });

  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, HOST, resolve);
  });
  const origin = `http://${HOST}:${server.address().port}`;

  for (const [name, cfg] of Object.entries(config.issuers ?? {})) {
    issuers.set(name, new Issuer(name, cfg ?? {}, origin));
  }
  if (issuers.size === 0) throw new Error('config defines no issuers');
  const paths = [...issuers.values()].map((i) => i.path);
  if (new Set(paths).size !== paths.length) throw new Error(`issuer paths collide: ${paths}`);
  await Promise.all([...issuers.values()].map((issuer) => issuer.rotateKey()));
  await Promise.all([...issuers.values()].map((issuer) => issuer.validateClients()));
  prefixes = [...issuers.values()].sort((a, b) => b.path.length - a.path.length);

  const shutdown = () => {
    server.close();
    server.closeAllConnections();
    process.exit(0);
  };
  process.on('SIGTERM', shutdown);
  process.on('SIGINT', shutdown);
  if (args.exitWithStdin) {
    // The Python side holds our stdin; if it dies without stopping us, we follow.
    process.stdin.on('end', shutdown);
    process.stdin.on('error', shutdown);
    process.stdin.resume();
  }

  process.stdout.write(`READY ${server.address().port}\n`);
}

main().catch((err) => {
  console.error(`oidc test bed failed to start: ${err.stack ?? err}`);
  process.exit(1);
});
