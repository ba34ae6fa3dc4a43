// Builds the dashboard into `dist/` (or $UPDRAFT_WEB_OUT, which build.rs sets to a folder
// under cargo's OUT_DIR). Hashed files go to `assets/` (served `immutable`); `vendor/` holds
// files copied as they are from npm packages and loaded only by the pages that need them
// (esp-web-tools for the USB flasher, ReDoc for /admin/redoc), outside the main bundle.
import { defineConfig, type Plugin } from 'vite';
import { svelte } from '@sveltejs/vite-plugin-svelte';
import { cpSync, mkdirSync } from 'node:fs';
import { resolve } from 'node:path';

const outDir = process.env.UPDRAFT_WEB_OUT ?? 'dist';

function vendor(): Plugin {
  return {
    name: 'updraft-vendor',
    apply: 'build',
    closeBundle() {
      const target = resolve(outDir, 'vendor');
      mkdirSync(target, { recursive: true });
      cpSync('node_modules/esp-web-tools/dist/web', resolve(target, 'esp-web-tools'), { recursive: true });
      mkdirSync(resolve(target, 'redoc'), { recursive: true });
      cpSync('node_modules/redoc/bundles/redoc.standalone.js', resolve(target, 'redoc/redoc.standalone.js'));
    },
  };
}

export default defineConfig({
  plugins: [svelte(), vendor()],
  build: {
    outDir,
    emptyOutDir: true,
    assetsDir: 'assets',
    target: 'es2022',
    reportCompressedSize: false,
    chunkSizeWarningLimit: 400,
  },
  server: {
    // `npm run dev`: the API comes from a server on :8080 (UPDRAFT_DEV_API to change it).
    proxy: Object.fromEntries(
      ['/api', '/metrics', '/admin'].map((p) => [p, { target: process.env.UPDRAFT_DEV_API ?? 'http://127.0.0.1:8080', changeOrigin: false }]),
    ),
  },
});
