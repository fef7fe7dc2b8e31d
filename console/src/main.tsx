import '@picocss/pico/css/pico.classless.min.css';
import './app.css';
import { render } from 'preact';
import { Api } from './api';
import { Auth } from './auth';
import { loadConfig } from './config';
import { App } from './app';

const root = document.getElementById('app')!;

function fatal(title: string, detail: string, retry?: () => void) {
  render(
    <main id="main">
      <h1 tabIndex={-1}>{title}</h1>
      <p role="alert">{detail}</p>
      {retry ? (
        <button type="button" onClick={retry}>
          Sign in
        </button>
      ) : null}
    </main>,
    root,
  );
}

async function start() {
  let config;
  try {
    config = await loadConfig();
  } catch (err) {
    fatal('The console is not configured', String(err instanceof Error ? err.message : err));
    return;
  }
  document.title = config.stage ? `custody console (${config.stage})` : 'custody console';
  const auth = new Auth(config);

  if (auth.isCallback()) {
    try {
      const back = await auth.completeSignIn();
      history.replaceState(null, '', back);
    } catch (err) {
      fatal('Sign-in failed', String(err instanceof Error ? err.message : err), () => {
        history.replaceState(null, '', '/');
        void auth.signIn('/');
      });
      return;
    }
  }

  const session = await auth.current();
  if (!session) {
    if (new URLSearchParams(location.search).has('signed_out')) {
      fatal('Signed out', 'Your session has ended. Tokens were kept in memory only and are gone.', () =>
        auth.signIn('/'),
      );
      return;
    }
    await auth.signIn();
    return;
  }

  const api = new Api(config.apiUrl, () => session.idToken);
  render(<App config={config} auth={auth} api={api} session={session} />, root);
}

void start();
