import { InMemoryWebStorage, UserManager, WebStorageStateStore, type User } from 'oidc-client-ts';
import type { Config } from './config';

export type Role = 'viewer' | 'operator' | 'admin';
const RANK: Record<Role, number> = { viewer: 0, operator: 1, admin: 2 };

export interface Session {
  user: User;
  idToken: string;
  tenant: string;
  role: Role;
  subject: string;
  name: string;
}

/** Is `role` at least `least`? Unknown roles get nothing. */
export function atLeast(role: Role | undefined, least: Role): boolean {
  return role !== undefined && RANK[role] >= RANK[least];
}

function parseRole(value: unknown): Role | undefined {
  return value === 'viewer' || value === 'operator' || value === 'admin' ? value : undefined;
}

export class Auth {
  readonly manager: UserManager;

  constructor(private readonly config: Config) {
    this.manager = new UserManager({
      authority: config.authority,
      client_id: config.clientId,
      redirect_uri: location.origin + config.redirectPath,
      post_logout_redirect_uri: location.origin + '/?signed_out=1',
      response_type: 'code',
      scope: config.scope ?? 'openid',
      // Tokens live in memory only: a reload signs in again.
      userStore: new WebStorageStateStore({ store: new InMemoryWebStorage() }),
      automaticSilentRenew: false,
      monitorSession: false,
      loadUserInfo: false,
    });
  }

  isCallback(): boolean {
    return location.pathname === this.config.redirectPath;
  }

  /** Finishes the code flow and returns where the user was going. */
  async completeSignIn(): Promise<string> {
    const user = await this.manager.signinRedirectCallback();
    const state = user.state as { returnTo?: string } | undefined;
    const back = state?.returnTo;
    return back && back.startsWith('/') && !back.startsWith('//') ? back : '/';
  }

  async signIn(returnTo = location.pathname + location.search + location.hash): Promise<void> {
    await this.manager.signinRedirect({ state: { returnTo } });
  }

  async current(): Promise<Session | null> {
    const user = await this.manager.getUser();
    if (!user || user.expired || !user.id_token) return null;
    return sessionOf(user);
  }

  async signOut(): Promise<void> {
    await this.manager.removeUser();
    const metadata = await this.manager.metadataService.getMetadata().catch(() => null);
    if (metadata?.end_session_endpoint) {
      await this.manager.signoutRedirect();
    }
  }
}

export function sessionOf(user: User): Session {
  const claims = user.profile as Record<string, unknown>;
  const tenant = String(claims['custom:tenant_id'] ?? claims['tenant_id'] ?? '');
  const role = parseRole(claims['custom:role'] ?? claims['role']) ?? 'viewer';
  return {
    user,
    idToken: user.id_token!,
    tenant,
    role,
    subject: String(claims.sub ?? ''),
    name: String(claims.email ?? claims.name ?? claims.sub ?? ''),
  };
}
