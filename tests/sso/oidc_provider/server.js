// A throwaway OpenID provider for tests/sso/test_oidc.py, on 127.0.0.1 only.
//
// Configuration comes from the environment (never the command line): PORT, CLIENT_ID,
// CLIENT_SECRET, REDIRECT_URI, USERS (JSON: {"alice": {"name": ..., "email": ..., "groups": [...]}}).
// The login form is oidc-provider's devInteractions (any password is accepted for a known user):
// the test drives it by plain HTTP form posts, as a browser would. Prints "listening <issuer>".
import Provider from 'oidc-provider';

const port = Number(process.env.PORT);
const issuer = `http://127.0.0.1:${port}`;
const users = JSON.parse(process.env.USERS || '{}');

const provider = new Provider(issuer, {
  clients: [
    {
      client_id: process.env.CLIENT_ID,
      client_secret: process.env.CLIENT_SECRET,
      redirect_uris: [process.env.REDIRECT_URI],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  // PKCE on every authorization request, also for confidential clients.
  pkce: { required: () => true },
  // The claims go into the ID token (the orchestrator reads the groups there).
  conformIdTokenClaims: false,
  claims: {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email'],
    groups: ['groups'],
  },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['test-only-cookie-key'] },
  async findAccount(ctx, id) {
    const user = users[id];
    if (!user) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: user.name, email: user.email, groups: user.groups };
      },
    };
  },
});

provider.listen(port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
