import { defineConfig } from 'vite';

// <custody-importer>: one ES module a SaaS app can load from the console's origin
// (<script type="module" src=".../custody-importer.js">). Built after the console,
// into the same dist/ (emptyOutDir: false).
export default defineConfig({
  esbuild: { jsx: 'automatic', jsxImportSource: 'preact' },
  build: {
    target: 'es2022',
    outDir: 'dist',
    emptyOutDir: false,
    assetsInlineLimit: 0,
    lib: {
      entry: 'src/importer/element.tsx',
      formats: ['es'],
      fileName: () => 'custody-importer.js',
    },
  },
  worker: { format: 'es' },
});
