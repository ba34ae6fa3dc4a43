// A real OpenID provider (the OpenID-certified `oidc-provider` package) for Updraft's OIDC
// tests (tests/api/oidc.rs), on loopback. The test starts it with `node provider.mjs`, reads
// one JSON line from its stdout, and stops it by PID.
//
// Environment:
//   PORT          port to listen on (0: any; the line says which)
//   REDIRECT_URI  the dashboard client's redirect URI (Updraft's callback)
//   DEVICES       comma-separated client ids of device clients (client-credentials grant)
//
// Clients (all with client_secret_post, secret "<client id>-secret"):
//   updraft-dashboard   authorization code + PKCE (S256 required), for REDIRECT_URI
//   ops-admin, ops-operator, ops-viewer, ops-provisioner, ops-none, ops-client-roles
//                       client credentials; their tokens carry `realm_access.roles`
//                       (`updraft-<role>`, none for ops-none) and, for ops-client-roles,
//                       `resource_access.updraft.roles: ["fleet-admins"]`
//   each of DEVICES     client credentials (a device)
// Every client-credentials token is a JWT access token (RFC 9068) for the `resource` asked
// for (`urn:updraft` or `urn:updraft:devices`), with `client_id` and `azp` naming the client.
// Users of the dev login form: any name; `alice` has updraft-admin, `victor` updraft-viewer,
// anyone else no role.
//
// Test-only routes: POST /test/rotate puts a new signing key first (the old ones stay
// published), so tokens are then signed with a key id Updraft has not seen.
//
// The line printed once ready: {"issuer": "...", "port": N, "test_key": {"kid", "der"}}:
// `test_key` is a published RS256 key that never signs anything here; the tests sign their
// hand-made (negative) tokens with it (its PKCS#1 DER, base64).

import { createServer } from 'node:http';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import Provider from 'oidc-provider';

// Stdout carries the one ready line (the test stops reading then): logs go to stderr.
console.log = console.error;
console.info = console.error;
process.stdout.on('error', () => {});

const port = Number(process.env.PORT || 0);
const redirectUri = process.env.REDIRECT_URI || 'http://127.0.0.1:1/api/v1/session/oidc/callback';
const devices = (process.env.DEVICES || '').split(',').filter(Boolean);

function newKey(kid) {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { privateKey, jwk: { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' } };
}

const testKey = newKey('test-key');
let signing = [newKey(`key-${randomUUID()}`).jwk];

const roles = {
  'ops-admin': ['updraft-admin', 'offline_access'],
  'ops-operator': ['updraft-operator'],
  'ops-viewer': ['updraft-viewer'],
  'ops-provisioner': ['updraft-provisioner'],
  'ops-none': ['offline_access'],
  'ops-client-roles': [],
};
const users = { alice: ['updraft-admin'], victor: ['updraft-viewer'] };

const clients = [
  {
    client_id: 'updraft-dashboard',
    client_secret: 'updraft-dashboard-secret',
    redirect_uris: [redirectUri],
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_post',
  },
  ...[...Object.keys(roles), ...devices].map((id) => ({
    client_id: id,
    client_secret: `${id}-secret`,
    redirect_uris: [],
    grant_types: ['client_credentials'],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
];

function makeProvider(issuer) {
  const provider = new Provider(issuer, {
    clients,
    jwks: { keys: [...signing, testKey.jwk] },
    cookies: { keys: ['updraft-test-cookie-key'] },
    pkce: { required: () => true },
    conformIdTokenClaims: false,
    claims: { openid: ['sub'], profile: ['preferred_username', 'realm_access'] },
    features: {
      devInteractions: { enabled: true },
      clientCredentials: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:updraft',
        useGrantedResource: () => true,
        getResourceServerInfo: (_ctx, resource) => ({
          scope: 'api',
          audience: resource,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 300,
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
    async findAccount(_ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, preferred_username: id, realm_access: { roles: users[id] || [] } };
        },
      };
    },
    async extraTokenClaims(ctx, token) {
      const clientId = token.clientId;
      if (token.kind === 'ClientCredentials') {
        const extra = { azp: clientId, preferred_username: `service-account-${clientId}` };
        if (roles[clientId]) extra.realm_access = { roles: roles[clientId] };
        if (clientId === 'ops-client-roles') extra.resource_access = { updraft: { roles: ['fleet-admins'] } };
        return extra;
      }
      if (token.accountId) {
        return { azp: clientId, preferred_username: token.accountId, realm_access: { roles: users[token.accountId] || [] } };
      }
      return undefined;
    },
    // No consent screen: the dev login form is the only interaction.
    async loadExistingGrant(ctx) {
      const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
      grant.addOIDCScope('openid profile email');
      grant.addOIDCClaims(['preferred_username', 'realm_access']);
      grant.addResourceScope('urn:updraft', 'api');
      await grant.save();
      return grant;
    },
    ttl: { AccessToken: 300, ClientCredentials: 300, IdToken: 300 },
  });
  provider.on('server_error', (_ctx, err) => console.error('server_error', err));
  return provider;
}

let provider;
let handler;
const server = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/test/rotate') {
    signing = [newKey(`key-${randomUUID()}`).jwk, ...signing];
    provider = makeProvider(provider.issuer);
    handler = provider.callback();
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ kid: signing[0].kid }));
    return;
  }
  handler(req, res);
});
server.listen(port, '127.0.0.1', () => {
  const actual = server.address().port;
  provider = makeProvider(`http://127.0.0.1:${actual}`);
  handler = provider.callback();
  const der = testKey.privateKey.export({ type: 'pkcs1', format: 'der' }).toString('base64');
  process.stdout.write(`${JSON.stringify({ issuer: provider.issuer, port: actual, test_key: { kid: 'test-key', der } })}\n`);
});
process.on('SIGTERM', () => server.close(() => process.exit(0)));
