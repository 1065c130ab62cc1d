// A real, certified OpenID provider (oidc-provider 8.8.1) for the sidecar's interop tests.
// Clients: alice and bob (certificate-bound, RFC 8705), carol (unbound), dave (DPoP-bound,
// RFC 9449), and the sidecar (introspection only).
//
// Two HTTPS listeners on 127.0.0.1, as RFC 8705 §5 deployments often have them:
//   - the issuer's listener (no client certificate requested): discovery, JWKS, plain endpoints;
//   - the mutual-TLS listener (requestCert): the endpoints advertised in `mtls_endpoint_aliases`.
// A client that authenticates with tls_client_auth must use the aliases; on the issuer's
// listener it has no certificate to present and its authentication fails.
//
// Usage: node server.mjs CONFIG.json   (written by tests/interop/oidc_idp.py)
// Writes {"issuer", "mtls"} to CONFIG.ready_file once both listeners accept connections.
// State (tokens, signing keys) lives in CONFIG.state_dir, so a restart keeps issued tokens.

import { X509Certificate, generateKeyPairSync, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import path from 'node:path';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const stateDir = config.state_dir;
const OPAQUE_RESOURCE = config.opaque_resource;
const JWT_RESOURCE = config.jwt_resource;
const SIDECAR_CLIENT = 'sidecar';

// ---- persistence: one JSON file, so that stopping and starting the IdP keeps its tokens ----
const storePath = path.join(stateDir, 'store.json');
const store = existsSync(storePath) ? JSON.parse(readFileSync(storePath, 'utf8')) : {};

function saveStore() {
  const tmp = `${storePath}.tmp`;
  writeFileSync(tmp, JSON.stringify(store));
  renameSync(tmp, storePath);
}

function now() {
  return Math.floor(Date.now() / 1000);
}

class FileAdapter {
  constructor(model) { this.model = model; }

  key(id) { return `${this.model}:${id}`; }

  async upsert(id, payload, expiresIn) {
    store[this.key(id)] = { payload, expiresAt: expiresIn ? now() + expiresIn : null };
    saveStore();
  }

  async find(id) {
    const entry = store[this.key(id)];
    if (!entry || (entry.expiresAt !== null && entry.expiresAt <= now())) return undefined;
    return entry.payload;
  }

  async findByUid(uid) {
    return Object.values(store).find((e) => e.payload.uid === uid)?.payload;
  }

  async findByUserCode(userCode) {
    return Object.values(store).find((e) => e.payload.userCode === userCode)?.payload;
  }

  async consume(id) {
    const entry = store[this.key(id)];
    if (entry) { entry.payload.consumed = now(); saveStore(); }
  }

  async destroy(id) {
    delete store[this.key(id)];
    saveStore();
  }

  async revokeByGrantId(grantId) {
    for (const [key, entry] of Object.entries(store)) {
      if (entry.payload.grantId === grantId) delete store[key];
    }
    saveStore();
  }
}

// ---- signing keys, made once per state directory ----
function signingKeys() {
  const keysPath = path.join(stateDir, 'jwks.json');
  if (existsSync(keysPath)) return JSON.parse(readFileSync(keysPath, 'utf8'));
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const jwks = {
    keys: [
      { ...rsa, kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'RS256' },
      { ...ec, kid: randomBytes(8).toString('hex'), use: 'sig', alg: 'ES256' },
    ],
  };
  writeFileSync(keysPath, JSON.stringify(jwks), { mode: 0o600 });
  return jwks;
}

// ---- RFC 8705 §2.1 tls_client_auth: chain to our CA and compare the subject DN ----
function peerCertificate(ctx) {
  // getPeerX509Certificate() is undefined without a certificate; getPeerCertificate() would
  // return {} and end in a 500 inside the provider.
  const socket = ctx.req.socket;
  return typeof socket.getPeerX509Certificate === 'function' ? socket.getPeerX509Certificate() : undefined;
}

function rfc4514(subject) {
  // Node lists the RDNs one per line, most significant first; RFC 4514 is the reverse order.
  return subject.split('\n').filter(Boolean).reverse().join(',');
}

function subjectMatches(ctx, property, expected) {
  if (property !== 'tls_client_auth_subject_dn') return false;
  const cert = peerCertificate(ctx);
  return cert instanceof X509Certificate && rfc4514(cert.subject) === expected;
}

// ---- clients ----
function mtlsClient(clientId, scope) {
  return {
    client_id: clientId,
    token_endpoint_auth_method: 'tls_client_auth', // governs introspection/revocation too (8.x)
    tls_client_auth_subject_dn: `CN=${clientId}`,
    tls_client_certificate_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope,
  };
}

const clients = [
  mtlsClient('alice', 'read write'),
  mtlsClient('bob', 'read write'),
  // bulky's tokens carry config.bulky_claims (extraTokenClaims below): the largest answers.
  mtlsClient('bulky', 'read write'),
  {
    client_id: 'carol',
    client_secret: config.carol_secret,
    token_endpoint_auth_method: 'client_secret_basic',
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  // A client with a self-signed certificate (RFC 8705 §2.2): its tokens are bound to a certificate
  // no CA vouches for, which a resource server may refuse (client_cert.ca_file).
  {
    client_id: 'selfie',
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    tls_client_certificate_bound_access_tokens: true,
    jwks: { keys: [config.self_signed_jwk] },
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  // dave binds his tokens with DPoP (RFC 9449): a proof with each token request, no certificate.
  {
    client_id: 'dave',
    client_secret: config.dave_secret,
    token_endpoint_auth_method: 'client_secret_basic',
    dpop_bound_access_tokens: true,
    grant_types: ['client_credentials'],
    response_types: [],
    redirect_uris: [],
    scope: 'read write',
  },
  // The sidecar authenticating with a signed JWT (RFC 7523 private_key_jwt) instead of mTLS.
  {
    client_id: 'sidecar-pkjwt',
    token_endpoint_auth_method: 'private_key_jwt',
    token_endpoint_auth_signing_alg: 'ES256',
    jwks: { keys: [config.pkjwt_jwk] },
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
  // The sidecar with a self-signed certificate the IdP knows by its key (RFC 8705 §2.2).
  {
    client_id: 'sidecar-self',
    token_endpoint_auth_method: 'self_signed_tls_client_auth',
    jwks: { keys: [config.self_signed_jwk] },
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
  // The sidecar's own client: it only introspects (no grant, no scope). It may ask for signed
  // introspection answers (RFC 9701, features.jwtIntrospection); Accept: application/json still
  // gets plain JSON.
  {
    client_id: SIDECAR_CLIENT,
    introspection_signed_response_alg: 'ES256',
    token_endpoint_auth_method: 'tls_client_auth',
    tls_client_auth_subject_dn: `CN=${SIDECAR_CLIENT}`,
    grant_types: [],
    response_types: [],
    redirect_uris: [],
  },
];

// ---- listeners first: the issuer and the aliases need their ports ----
const tls = {
  cert: readFileSync(config.server_cert),
  key: readFileSync(config.server_key),
  ca: readFileSync(config.ca),
};
const plain = https.createServer({ ...tls });
// mtls_reject_unauthorized: a certificate that does not chain to CONFIG.ca ends the handshake (as
// IdPs that check client certificates in their TLS terminator do); otherwise the provider decides.
const mtls = https.createServer({ ...tls, requestCert: true, rejectUnauthorized: config.mtls_reject_unauthorized === true });

function listen(server, port) {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve(server.address().port));
  });
}

const plainPort = await listen(plain, config.plain_port ?? 0);
const mtlsPort = await listen(mtls, config.mtls_port ?? 0);
const issuer = `https://127.0.0.1:${plainPort}`;
const mtlsBase = `https://127.0.0.1:${mtlsPort}`;

const provider = new Provider(issuer, {
  adapter: FileAdapter,
  clients,
  jwks: signingKeys(),
  cookies: { keys: [randomBytes(32).toString('hex')] },
  // offline_access: the refresh_token grant exists, so refresh tokens are introspectable (a shape to refuse).
  scopes: ['read', 'write', 'admin', 'offline_access'],
  clientAuthMethods: ['tls_client_auth', 'self_signed_tls_client_auth', 'private_key_jwt', 'client_secret_basic',
    'client_secret_post'],
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // RFC 9449: a token requested with a DPoP proof is bound to its key (cnf.jkt, token_type DPoP).
    dPoP: { enabled: true },
    revocation: { enabled: true },
    jwtIntrospection: { enabled: true },
    introspection: {
      enabled: true,
      // By default any authenticated client may introspect any token: only the sidecar may.
      allowedPolicy: async (ctx, client) => [SIDECAR_CLIENT, 'sidecar-pkjwt', 'sidecar-self'].includes(client.clientId),
    },
    mTLS: {
      enabled: true,
      certificateBoundAccessTokens: true,
      tlsClientAuth: true,
      selfSignedTlsClientAuth: true,
      getCertificate: peerCertificate,
      certificateAuthorized: (ctx) => ctx.req.socket.authorized === true,
      certificateSubjectMatches: subjectMatches,
    },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => OPAQUE_RESOURCE,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resource) => {
        if (resource === OPAQUE_RESOURCE) {
          return { scope: 'read write admin', audience: OPAQUE_RESOURCE, accessTokenFormat: 'opaque' };
        }
        if (resource === JWT_RESOURCE) {
          return {
            scope: 'read write admin',
            audience: JWT_RESOURCE,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'ES256' } },
          };
        }
        throw new errors.InvalidTarget();
      },
    },
  },
  ttl: {
    ClientCredentials: () => config.token_ttl ?? 600,
  },
  // Returned by introspection; sub and username too, as no grant of bulky's sets them.
  extraTokenClaims: async (ctx, token) => (token.clientId === 'bulky' ? config.bulky_claims : undefined),
  discovery: {
    // Not advertised by oidc-provider itself (RFC 8705 §5).
    mtls_endpoint_aliases: {
      token_endpoint: `${mtlsBase}/token`,
      introspection_endpoint: `${mtlsBase}/token/introspection`,
      revocation_endpoint: `${mtlsBase}/token/revocation`,
    },
  },
});

provider.on('server_error', (ctx, err) => console.error('server_error', ctx.path, err));
for (const event of ['grant.error', 'introspection.error', 'revocation.error']) {
  // The client only ever reads "client authentication failed"; the reason is logged here.
  provider.on(event, (ctx, err) => console.error(event, ctx.path, err.message, err.error_detail ?? ''));
}

const callback = provider.callback();

// Test-only: a refresh token as the provider itself stores and introspects it (the code flow
// that issues one needs a browser here). POST /__test__/refresh_token with client_id=...
async function mintRefreshToken(req, res) {
  let body = '';
  for await (const chunk of req) body += chunk;
  const clientId = new URLSearchParams(body).get('client_id');
  const client = await provider.Client.find(clientId);
  const accountId = `${clientId}-user`;
  const grant = new provider.Grant({ accountId, clientId });
  grant.addOIDCScope('openid');
  const grantId = await grant.save();
  const token = new provider.RefreshToken({ client, accountId, grantId, scope: 'openid', gty: 'authorization_code' });
  const value = await token.save();
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ refresh_token: value }));
}

plain.on('request', (req, res) => {
  if (req.method === 'POST' && req.url === '/__test__/refresh_token') {
    mintRefreshToken(req, res).catch((err) => { res.writeHead(500); res.end(String(err)); });
  } else {
    callback(req, res);
  }
});
mtls.on('request', callback);

function shutdown() {
  for (const server of [plain, mtls]) {
    server.close();
    server.closeAllConnections();
  }
  process.exit(0);
}
process.on('SIGTERM', shutdown);
process.on('SIGINT', shutdown);

writeFileSync(`${config.ready_file}.tmp`, JSON.stringify({ issuer, mtls: mtlsBase }));
renameSync(`${config.ready_file}.tmp`, config.ready_file);
