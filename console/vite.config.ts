import { defineConfig } from 'vite';

// The console (index.html). The embeddable <custody-importer> is a second,
// self-contained build (vite.importer.config.ts) so other origins can load one file.
export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    target: 'es2022',
    outDir: 'dist',
    emptyOutDir: true,
    sourcemap: false,
    // No inline <script> or data: URLs anywhere: the console is served with a strict CSP.
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
  },
  worker: { format: 'es' },
});
