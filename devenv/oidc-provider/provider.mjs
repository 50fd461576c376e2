// A throwaway OpenID Provider for Gatehouse's tests and demo: panva's certified oidc-provider,
// configured from one JSON file so the Python side (devenv/oidc.py) controls everything a test
// needs to vary: port, signing keys (rotation = restart with another key set), token lifetimes,
// accounts and their groups.
//
// Usage: node provider.mjs CONFIG.json
//
// CONFIG.json (written by devenv/oidc.py):
//   issuer         "http://127.0.0.1:PORT"
//   port           PORT (listens on 127.0.0.1 only)
//   jwks           { keys: [private JWKs] } - all published; the first RS256 key signs
//   clients        [client metadata] - the CLI is a public native client
//   accounts       { id: { email, name, groups } } - devInteractions logs in with the id
//   resources      { indicator: { audience, scope } } - JWT access tokens per resource
//   defaultResource  the indicator used when a request names none
//   ttl            { AccessToken, IdToken, RefreshToken, DeviceCode, Interaction, Session, Grant }
//   deviceInterval   seconds between device-grant polls announced to clients
//   jwksMaxAge       when set, the JWKS answers with Cache-Control: max-age=N
//   cookieKeys     [secrets that sign the provider's cookies]

import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const configPath = process.argv[2];
if (!configPath) {
  console.error('usage: node provider.mjs CONFIG.json');
  process.exit(2);
}
const cfg = JSON.parse(readFileSync(configPath, 'utf8'));

function account(id) {
  const entry = cfg.accounts[id];
  if (!entry) return undefined;
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: entry.email,
        email_verified: true,
        name: entry.name ?? id,
        groups: entry.groups ?? [],
      };
    },
  };
}

const configuration = {
  clients: cfg.clients,
  jwks: cfg.jwks,
  cookies: { keys: cfg.cookieKeys },
  findAccount: async (_ctx, sub) => account(sub),
  // `groups` rides on the profile scope so the usual "openid profile email" asks for it.
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'groups'],
  },
  scopes: ['openid', 'offline_access', 'profile', 'email'],
  // ID tokens carry the scope's claims even when an access token is issued too, as most
  // identity providers in the field do; the CLI shows them in `whoami`.
  conformIdTokenClaims: false,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => cfg.defaultResource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator) => {
        const resource = cfg.resources[indicator];
        if (!resource) throw new errors.InvalidTarget();
        return {
          audience: resource.audience,
          scope: resource.scope ?? 'openid profile email offline_access',
          accessTokenFormat: 'jwt',
          accessTokenTTL: cfg.ttl.AccessToken,
        };
      },
    },
  },
  pkce: { required: () => true },
  // A refresh token for every client allowed the grant: the CLI refreshes silently, and
  // oidc-provider would otherwise demand offline_access together with prompt=consent.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  // RFC 9068 access tokens carry who the person is, so the control plane needs no userinfo call.
  extraTokenClaims: async (_ctx, token) => {
    if (token.kind !== 'AccessToken' || !token.accountId) return undefined;
    const entry = cfg.accounts[token.accountId];
    if (!entry) return undefined;
    return { email: entry.email, groups: entry.groups ?? [] };
  },
  ttl: cfg.ttl,
};

const provider = new Provider(cfg.issuer, configuration);

// RFC 8628 lets the server choose the polling interval; the default of 5 s would make every
// test of the device grant wait that long.
provider.use(async (ctx, next) => {
  await next();
  if (ctx.path === '/device/auth' && ctx.status === 200 && ctx.body?.device_code) {
    ctx.body.interval = cfg.deviceInterval;
  }
  if (ctx.path === '/jwks' && ctx.status === 200 && cfg.jwksMaxAge != null) {
    ctx.set('cache-control', `public, max-age=${cfg.jwksMaxAge}`);
  }
});

provider.on('server_error', (_ctx, err) => console.error('server_error', err));

const server = provider.listen(cfg.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${cfg.issuer}`);
});
server.on('error', (err) => {
  console.error(`cannot listen on 127.0.0.1:${cfg.port}: ${err.code ?? err.message}`);
  process.exit(1);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  });
}
