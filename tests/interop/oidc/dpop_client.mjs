// A real DPoP client (RFC 9449): panva's oauth4webapi, as an application would use it, for the
// sidecar's interop tests (tests/interop/test_dpop_clients.py).
//
// Usage: node dpop_client.mjs CONFIG.json   (the test CA in NODE_EXTRA_CA_CERTS)
// CONFIG: {issuer, client_id, client_secret, resource, scope, api, requests: [{method, path}]}
//
// It makes an Ed25519 key pair (oauth4webapi signs its proofs with the RFC 9864 fully-specified
// alg "Ed25519"), gets a DPoP-bound token for that key from the IdP, then makes each request to
// the API with protectedResourceRequest and the library's DPoP handle: the library builds every
// proof to the API (htm, htu, iat, jti, ath, nonce), keeps the DPoP-Nonce of each answer and, when
// the API answers use_dpop_nonce, the request is retried once with the nonce it just learned (the
// library's documented pattern: isDPoPNonceError). Prints one JSON object: the key's thumbprint,
// the token type, and per request the status, the DPoP-Nonce answered, the error and the retries.
//
// The token request alone carries a proof made here, with alg "EdDSA" for the same key: the IdP,
// oidc-provider 8.8.1 (jose 5), knows the polymorphic name only. The token is bound to the key's
// thumbprint, whichever name signed the proof.

import { randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import * as oauth from 'oauth4webapi';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = new URL(config.issuer);
const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer));
const client = { client_id: config.client_id };
const keyPair = await oauth.generateKeyPair('Ed25519');
const DPoP = oauth.DPoP(client, keyPair);

const b64url = (bytes) => Buffer.from(bytes).toString('base64url');

async function tokenRequestProof(htu) {
  const { kty, crv, x } = await crypto.subtle.exportKey('jwk', keyPair.publicKey);
  const header = b64url(JSON.stringify({ typ: 'dpop+jwt', alg: 'EdDSA', jwk: { kty, crv, x } }));
  const payload = b64url(JSON.stringify({ jti: randomUUID(), htm: 'POST', htu, iat: Math.floor(Date.now() / 1000) }));
  const signature = await crypto.subtle.sign('Ed25519', keyPair.privateKey, Buffer.from(`${header}.${payload}`));
  return `${header}.${payload}.${b64url(new Uint8Array(signature))}`;
}

async function withNonceRetry(call) {
  let retried = 0;
  for (;;) {
    try {
      return { response: await call(), retried };
    } catch (err) {
      if (oauth.isDPoPNonceError(err) && retried === 0) {
        retried += 1;
        continue;
      }
      return { error: err, retried };
    }
  }
}

const basic = Buffer.from(`${encodeURIComponent(config.client_id)}:${encodeURIComponent(config.client_secret)}`);
const answer = await fetch(as.token_endpoint, {
  method: 'POST',
  headers: { authorization: `Basic ${basic.toString('base64')}`, dpop: await tokenRequestProof(as.token_endpoint),
             'content-type': 'application/x-www-form-urlencoded' },
  body: new URLSearchParams({ grant_type: 'client_credentials', scope: config.scope, resource: config.resource }),
});
const grant = await answer.json();
if (!answer.ok) {
  console.log(JSON.stringify({ grant_error: grant }));
  process.exit(1);
}
const token = grant.access_token;

const results = [];
for (const { method, path } of config.requests) {
  const done = await withNonceRetry(() => oauth.protectedResourceRequest(
    token, method, new URL(config.api + path), new Headers(), null, { DPoP },
  ));
  if (done.response) {
    const response = done.response;
    results.push({ status: response.status, nonce: response.headers.get('dpop-nonce'), retried: done.retried,
                   body: await response.text() });
  } else {
    const response = done.error.response;
    results.push({
      status: response?.status ?? null, nonce: response?.headers.get('dpop-nonce') ?? null, retried: done.retried,
      error: done.error.code ?? String(done.error),
      challenge: response?.headers.get('www-authenticate') ?? null,
    });
  }
}
console.log(JSON.stringify({
  jkt: await DPoP.calculateThumbprint(), token_type: grant.token_type, results,
}));
