// <custody-importer api-url="https://…" token="cis_…" [purpose="marketing"]>
// The importer as a custom element for other apps' pages. It renders into its own
// light DOM (the host page's styles apply) and fires `custody-import` events.
// A token starting with `cis_` is an import-session token (POST /import-sessions):
// session mode, on the /embed/imports routes, with the session's destination. Any
// other token is a console bearer token, with `destination-url` as the default
// destination. An optional `purpose` (one of the tenant's declared purposes) is sent
// with the import, so subjects who withdrew consent for it are left out.
import { render } from 'preact';
import { Api } from '../api';
import { Importer } from './importer';

/** Import-session tokens (`POST /import-sessions`) start with this. */
const SESSION_TOKEN_PREFIX = 'cis_';

class CustodyImporter extends HTMLElement {
  static observedAttributes = ['api-url', 'token', 'destination-url', 'purpose'];

  connectedCallback() {
    this.draw();
  }

  attributeChangedCallback() {
    if (this.isConnected) this.draw();
  }

  disconnectedCallback() {
    render(null, this);
  }

  private draw() {
    const apiUrl = (this.getAttribute('api-url') ?? '').replace(/\/+$/, '');
    const token = this.getAttribute('token') ?? '';
    if (!apiUrl || !token) {
      render(<p role="alert">custody-importer needs the api-url and token attributes.</p>, this);
      return;
    }
    // A token, not a console login: no cookies are sent.
    const api = new Api(apiUrl, () => this.getAttribute('token') ?? '', 'omit');
    const session = token.startsWith(SESSION_TOKEN_PREFIX);
    render(
      <Importer
        api={api}
        session={session}
        destinationUrl={session ? '' : (this.getAttribute('destination-url') ?? '')}
        purpose={this.getAttribute('purpose') ?? undefined}
        purposes={[]}
        onDone={(imported) =>
          this.dispatchEvent(new CustomEvent('custody-import', { detail: imported, bubbles: true, composed: true }))
        }
      />,
      this,
    );
  }
}

if (!customElements.get('custody-importer')) customElements.define('custody-importer', CustodyImporter);

export { CustodyImporter };
