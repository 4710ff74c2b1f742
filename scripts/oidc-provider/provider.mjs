// A real OpenID provider (panva/oidc-provider) for Switchboard's OIDC tests.
//
//   node provider.mjs --port 0 --redirect-uri http://127.0.0.1:8080/callback
//
// Listens on 127.0.0.1, prints ONE line of JSON to stdout once it accepts
// connections ({"issuer":"http://127.0.0.1:PORT","port":PORT}) and exits when
// its standard input closes, so a test that dies cannot leak it. Everything
// else (oidc-provider's notices, errors) goes to stderr.
//
// Options:
//   --port N              port to listen on; 0 (the default) picks a free one
//   --redirect-uri URI    a redirect URI of client `switchboard` (repeatable);
//                         a value ending in `*` allows every URI starting
//                         with what precedes the `*` (for servers on port 0)
//   --access-token-alg A  JWS alg of JWT access tokens: RS256 (default) or ES256
//
// Clients:
//   switchboard / switchboard-secret  authorization_code (PKCE S256 required)
//                                     and client_credentials
//   service-a / service-a-secret      client_credentials only: a service that
//                                     already has tokens from "Keycloak"
//
// Accounts: the login page accepts any login name (the password is ignored);
// `alice` and `bob` have fixed claims, see ACCOUNTS. Every access token is a
// JWT signed with the provider's JWKS. Its audience comes from the resource
// indicator (`resource` parameter), see RESOURCE_SERVERS.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import { parseArgs } from 'node:util';

// oidc-provider prints its notices with console.info, i.e. to stdout, which
// is reserved for the one JSON line: send them to stderr.
console.info = console.error;
console.log = console.error;
const { default: Provider } = await import('oidc-provider');

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: '0' },
    'redirect-uri': { type: 'string', multiple: true, default: [] },
    'access-token-alg': { type: 'string', default: 'RS256' },
  },
});

const port = Number.parseInt(args.port, 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  throw new Error(`--port must be a port number, not ${args.port}`);
}
if (!['RS256', 'ES256'].includes(args['access-token-alg'])) {
  throw new Error(`--access-token-alg must be RS256 or ES256, not ${args['access-token-alg']}`);
}

const exactRedirectUris = args['redirect-uri'].filter((uri) => !uri.endsWith('*'));
const redirectUriPrefixes = args['redirect-uri']
  .filter((uri) => uri.endsWith('*'))
  .map((uri) => uri.slice(0, -1));

// People who can sign in. Any other login name signs in too, with an email
// derived from it and no groups or roles.
const ACCOUNTS = {
  alice: {
    email: 'alice@example.test',
    email_verified: true,
    name: 'Alice Admin',
    groups: ['switchboard-admins'],
    realm_access: { roles: ['admin', 'offline_access'] },
  },
  bob: {
    email: 'bob@example.test',
    email_verified: false,
    name: 'Bob User',
    groups: [],
    realm_access: { roles: [] },
  },
};

function accountClaims(login) {
  return {
    sub: login,
    preferred_username: login,
    ...(ACCOUNTS[login] ?? {
      email: `${login}@example.test`,
      email_verified: true,
      name: login,
      groups: [],
      realm_access: { roles: [] },
    }),
  };
}

// What client_credentials tokens say about each service, Keycloak-style.
const CLIENT_CLAIMS = {
  switchboard: { groups: [], realm_access: { roles: [] } },
  'service-a': { groups: ['services'], realm_access: { roles: ['operator'] } },
};

// Resource indicators a client may ask for; the default is the API.
// `urn:test:expired` issues tokens that expired an hour ago (for tests of
// expiry; see formats.customizers.jwt below).
const DEFAULT_RESOURCE = 'urn:switchboard:api';
const RESOURCE_SERVERS = {
  'urn:switchboard:api': { audience: 'switchboard-api' },
  'urn:other:api': { audience: 'other-api' },
  'urn:test:expired': { audience: 'switchboard-api' },
};

function signingKeys() {
  const rsa = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey;
  const ec = crypto.generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey;
  return [
    { ...rsa.export({ format: 'jwk' }), kid: `rsa-${crypto.randomUUID()}`, use: 'sig', alg: 'RS256' },
    { ...ec.export({ format: 'jwk' }), kid: `ec-${crypto.randomUUID()}`, use: 'sig', alg: 'ES256' },
  ];
}

const server = http.createServer();
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const actualPort = server.address().port;
const issuer = `http://127.0.0.1:${actualPort}`;

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: 'switchboard',
      client_secret: 'switchboard-secret',
      grant_types: ['authorization_code', 'client_credentials'],
      response_types: ['code'],
      // oidc-provider wants at least one; prefixes are checked below.
      redirect_uris: exactRedirectUris.length > 0 ? exactRedirectUris : [`${issuer}/unused-callback`],
    },
    {
      client_id: 'service-a',
      client_secret: 'service-a-secret',
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
    },
  ],
  jwks: { keys: signingKeys() },
  cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
  claims: {
    // Roles and groups ride on `openid` so that every ID token carries them.
    openid: ['sub', 'groups', 'realm_access'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
  },
  // Put every granted claim in the ID token, not only in userinfo.
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: true },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => DEFAULT_RESOURCE,
      // The code flow's access token is for the API too, not for userinfo.
      useGrantedResource: () => true,
      getResourceServerInfo: (_ctx, resourceIndicator) => {
        const resourceServer = RESOURCE_SERVERS[resourceIndicator];
        if (!resourceServer) {
          throw new Provider.errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          scope: '',
          audience: resourceServer.audience,
          accessTokenFormat: 'jwt',
          accessTokenTTL: 600,
          jwt: { sign: { alg: args['access-token-alg'] } },
        };
      },
    },
  },
  findAccount: (_ctx, sub) => ({
    accountId: sub,
    claims: () => accountClaims(sub),
  }),
  extraTokenClaims: (_ctx, token) => {
    if (token.kind === 'ClientCredentials') {
      return CLIENT_CLAIMS[token.clientId];
    }
    if (token.accountId) {
      const { sub: _sub, ...claims } = accountClaims(token.accountId);
      return claims;
    }
    return undefined;
  },
  formats: {
    customizers: {
      jwt: (_ctx, token, jwt) => {
        if (token.resourceServer?.identifier() === 'urn:test:expired') {
          jwt.payload.iat -= 7200;
          jwt.payload.exp = jwt.payload.iat + 3600;
        }
      },
    },
  },
});

if (redirectUriPrefixes.length > 0) {
  const { redirectUriAllowed } = provider.Client.prototype;
  provider.Client.prototype.redirectUriAllowed = function allowPrefixes(value) {
    return redirectUriAllowed.call(this, value)
      || (this.clientId === 'switchboard' && redirectUriPrefixes.some((prefix) => value.startsWith(prefix)));
  };
}

for (const event of ['server_error', 'authorization.error', 'grant.error', 'introspection.error']) {
  provider.on(event, (_ctx, error) => {
    console.error(`oidc-provider ${event}: ${error.message}${error.error_description ? ` (${error.error_description})` : ''}`);
  });
}

server.on('request', provider.callback());

process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();

process.stdout.write(`${JSON.stringify({ issuer, port: actualPort })}\n`);
