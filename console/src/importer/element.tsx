// <custody-importer api-url="https://…" token="…" destination-url="https://…">
// The importer as a custom element for other apps' pages. It renders into its own
// light DOM (the host page's styles apply) and fires `custody-import` events.
import { render } from 'preact';
import { Api } from '../api';
import { Importer } from './importer';

class CustodyImporter extends HTMLElement {
  static observedAttributes = ['api-url', 'token', 'destination-url'];

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
    // An import-session token, not a console login: no cookies are sent.
    const api = new Api(apiUrl, () => this.getAttribute('token') ?? '', 'omit');
    render(
      <Importer
        api={api}
        destinationUrl={this.getAttribute('destination-url') ?? ''}
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
