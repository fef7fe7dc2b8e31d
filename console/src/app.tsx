import type { ComponentChildren } from 'preact';
import { useCallback, useEffect, useMemo, useRef, useState } from 'preact/hooks';
import type { Api } from './api';
import type { Auth, Session } from './auth';
import type { Config } from './config';
import { Ctx, type AppContext } from './context';
import { Overview } from './pages/overview';
import { Connections } from './pages/connections';
import { Exports } from './pages/exports';
import { Imports, ImportDetail } from './pages/imports';
import { Privacy, PrivacyRequest } from './pages/privacy';
import { Audit } from './pages/audit';
import { Account } from './pages/account';

interface Route {
  title: string;
  nav?: string;
  render: (params: string[]) => ComponentChildren;
}

const ROUTES: [RegExp, Route][] = [
  [/^\/$/, { title: 'Overview', nav: '/', render: () => <Overview /> }],
  [/^\/connections$/, { title: 'Connections', nav: '/connections', render: () => <Connections /> }],
  [/^\/exports$/, { title: 'Exports', nav: '/exports', render: () => <Exports /> }],
  [/^\/imports$/, { title: 'Imports', nav: '/imports', render: () => <Imports /> }],
  [/^\/imports\/([0-9A-Za-z]{26})$/, { title: 'Import', nav: '/imports', render: ([id]) => <ImportDetail id={id} /> }],
  [/^\/privacy$/, { title: 'Privacy', nav: '/privacy', render: () => <Privacy /> }],
  [
    /^\/privacy\/requests\/([0-9A-Za-z]{26})$/,
    { title: 'Privacy request', nav: '/privacy', render: ([id]) => <PrivacyRequest id={id} /> },
  ],
  [/^\/audit$/, { title: 'Audit', nav: '/audit', render: () => <Audit /> }],
  [/^\/account$/, { title: 'Account', nav: '/account', render: () => <Account /> }],
];

const NAV: [string, string][] = [
  ['/', 'Overview'],
  ['/connections', 'Connections'],
  ['/exports', 'Exports'],
  ['/imports', 'Imports'],
  ['/privacy', 'Privacy'],
  ['/audit', 'Audit'],
  ['/account', 'Account'],
];

function match(path: string): { route: Route; params: string[] } | null {
  for (const [pattern, route] of ROUTES) {
    const m = pattern.exec(path);
    if (m) return { route, params: m.slice(1) };
  }
  return null;
}

export function App(props: { config: Config; auth: Auth; api: Api; session: Session }) {
  const [location_, setLocation] = useState(() => ({ path: location.pathname, key: 0 }));
  const [expired, setExpired] = useState(false);
  const mainRef = useRef<HTMLElement>(null);
  const first = useRef(true);

  const navigate = useCallback((to: string, options: { replace?: boolean } = {}) => {
    if (options.replace) history.replaceState(null, '', to);
    else history.pushState(null, '', to);
    setLocation((l) => ({ path: new URL(to, location.href).pathname, key: l.key + 1 }));
  }, []);

  // Same-origin links navigate inside the app.
  const onClick = (e: MouseEvent) => {
    if (e.defaultPrevented || e.button !== 0 || e.metaKey || e.ctrlKey || e.shiftKey || e.altKey) return;
    const anchor = (e.target as Element).closest('a');
    if (!anchor || anchor.target || anchor.hasAttribute('download')) return;
    const url = new URL(anchor.href, location.href);
    if (url.origin !== location.origin) return;
    e.preventDefault();
    navigate(url.pathname + url.search + url.hash);
  };

  useEffect(() => {
    const onPop = () => setLocation((l) => ({ path: location.pathname, key: l.key + 1 }));
    addEventListener('popstate', onPop);
    props.api.onUnauthorized = () => setExpired(true);
    document.addEventListener('click', onClick);
    return () => {
      removeEventListener('popstate', onPop);
      document.removeEventListener('click', onClick);
    };
  }, []);

  const matched = match(location_.path);
  const title = matched?.route.title ?? 'Not found';

  // Route change: new title, focus on the page's heading (not on first load).
  useEffect(() => {
    document.title = `${title} · custody console`;
    if (first.current) {
      first.current = false;
      return;
    }
    const heading = mainRef.current?.querySelector<HTMLElement>('h1');
    heading?.focus();
    window.scrollTo(0, 0);
  }, [location_.key]);

  const ctx: AppContext = useMemo(
    () => ({ config: props.config, api: props.api, auth: props.auth, session: props.session, navigate }),
    [navigate],
  );
  const { session } = props;

  return (
    <Ctx.Provider value={ctx}>
      <>
        <a class="skip" href="#main" onClick={(e) => { e.preventDefault(); mainRef.current?.querySelector<HTMLElement>('h1')?.focus(); }}>
          Skip to content
        </a>
        <header>
          <nav aria-label="Main">
            <ul>
              <li>
                <strong>custody</strong>
                {props.config.stage ? <small> {props.config.stage}</small> : null}
              </li>
            </ul>
            <ul>
              {NAV.map(([href, label]) => (
                <li key={href}>
                  <a href={href} aria-current={matched?.route.nav === href ? 'page' : undefined}>
                    {label}
                  </a>
                </li>
              ))}
            </ul>
            <ul>
              <li>
                <span class="who" data-role={session.role}>
                  {session.tenant} · <span data-testid="role">{session.role}</span>
                </span>
              </li>
              <li>
                <button
                  type="button"
                  class="secondary outline"
                  onClick={async () => {
                    await props.auth.signOut();
                    location.assign('/?signed_out=1');
                  }}
                >
                  Sign out
                </button>
              </li>
            </ul>
          </nav>
        </header>
        <main id="main" ref={mainRef} key={location_.key}>
          {expired ? (
            <p role="alert" class="problem">
              Your session has expired.{' '}
              <button type="button" onClick={() => props.auth.signIn()}>
                Sign in again
              </button>
            </p>
          ) : null}
          {matched ? (
            matched.route.render(matched.params)
          ) : (
            <>
              <h1 tabIndex={-1}>Not found</h1>
              <p>
                There is no page at <code>{location_.path}</code>. <a href="/">Go to the overview</a>.
              </p>
            </>
          )}
        </main>
        <footer class="page-footer">
          <small>
            Tokens are kept in memory only; reloading the page signs you in again.
          </small>
        </footer>
      </>
    </Ctx.Provider>
  );
}
