import { createContext } from 'preact';
import { useContext } from 'preact/hooks';
import type { Api } from './api';
import type { Auth, Role, Session } from './auth';
import type { Config } from './config';

export interface AppContext {
  config: Config;
  api: Api;
  auth: Auth;
  session: Session;
  navigate: (to: string, options?: { replace?: boolean }) => void;
}

export const Ctx = createContext<AppContext | null>(null);

export function useApp(): AppContext {
  const ctx = useContext(Ctx);
  if (!ctx) throw new Error('no app context');
  return ctx;
}

export function useRole(): Role {
  return useApp().session.role;
}
