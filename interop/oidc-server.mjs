// oidc-provider (a certified OpenID Connect / OAuth 2.0 server) on a loopback
// port, configured as spotoken's interoperability tests need it: a public
// native client with PKCE required, rotating refresh tokens, the device flow,
// revocation and introspection, and the development login/consent forms.
//
// Prints one JSON line {"issuer": ...} once listening; later lines report
// events the test waits for ({"event": "slow_down"}).
//
// oidc-provider itself never answers `slow_down` (it sends no `interval`
// either, so clients use RFC 8628's 5 s). With SLOW_DOWN_ONCE=1 the first
// `authorization_pending` of each device code is answered as `slow_down`
// instead, so the client's reaction to it is tested against this server.
import http from 'node:http';
import Provider, { errors } from 'oidc-provider';

const DEVICE_GRANT = 'urn:ietf:params:oauth:grant-type:device_code';
export const CLIENT_ID = 'spotoken-interop';

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const issuer = `http://127.0.0.1:${server.address().port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: CLIENT_ID,
    application_type: 'native',
    token_endpoint_auth_method: 'none',
    // Native clients may use any port on a loopback redirect URI.
    redirect_uris: ['http://127.0.0.1/callback'],
    grant_types: ['authorization_code', 'refresh_token', DEVICE_GRANT],
    response_types: ['code'],
  }],
  scopes: ['openid', 'offline_access'],
  pkce: { required: () => true },
  // Refresh tokens for every grant, not only with offline_access.
  issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
  rotateRefreshToken: () => true,
  features: {
    devInteractions: { enabled: true },
    deviceFlow: { enabled: true },
    revocation: { enabled: true },
    introspection: { enabled: true },
  },
  ttl: { AccessToken: 3600, DeviceCode: 600 },
  // Quiet, deterministic cookies for a headless client over plain http.
  cookies: { keys: ['interop-only-cookie-key'] },
});

const slowedDown = new Set();
provider.use(async (ctx, next) => {
  await next();
  const params = ctx.oidc?.params;
  if (
    process.env.SLOW_DOWN_ONCE === '1'
    && ctx.path === '/token'
    && params?.grant_type === DEVICE_GRANT
    && ctx.status === 400
    && ctx.body?.error === 'authorization_pending'
    && !slowedDown.has(params.device_code)
  ) {
    slowedDown.add(params.device_code);
    const e = new errors.SlowDown();
    ctx.body = { error: e.error, error_description: e.error_description };
    console.log(JSON.stringify({ event: 'slow_down' }));
  }
});

server.on('request', provider.callback());
console.log(JSON.stringify({ issuer, client_id: CLIENT_ID }));
