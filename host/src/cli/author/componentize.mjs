// Builds a JavaScript plugin into a component, for `millrace plugin build`:
//   node componentize.mjs NODE_MODULES SOURCE.js WIT_DIR WORLD OUT.wasm TYPES_DIR
// componentize-js (SpiderMonkey, no AOT: nothing is downloaded at build time) with every
// optional WASI feature off, so the component imports only what its world imports; then jco's
// TypeScript declarations of the world, as a guest sees it, into TYPES_DIR.
import { existsSync } from 'node:fs';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';

// jco reads the WIT through a WASI view of the file system: absolute paths only.
const [modules, source, wit, world, out, types] = process.argv.slice(2).map((a, i) => (i === 3 ? a : resolve(a)));
const load = (file) => import(pathToFileURL(join(modules, file)).href);

const { componentize } = await load('@bytecodealliance/componentize-js/src/componentize.js');
const { component } = await componentize({
  sourcePath: source,
  witPath: wit,
  worldName: world,
  disableFeatures: ['stdio', 'random', 'clocks', 'http', 'fetch-event'],
});
await mkdir(dirname(out), { recursive: true });
await writeFile(out, component);

// jco's WIT reader runs as a component whose file system starts with nothing preopened. Give it
// the file system as this process sees it (it only reads the WIT, and its deps may be links out
// of the folder); node itself already has that authority.
for (const shim of [
  '@bytecodealliance/jco-transpile/node_modules/@bytecodealliance/preview2-shim',
  '@bytecodealliance/preview2-shim',
]) {
  const filesystem = join(modules, shim, 'dist/nodejs/filesystem.js');
  if (existsSync(filesystem)) {
    (await import(pathToFileURL(filesystem).href))._setPreopens({ '/': '/' });
  }
}
const jco = await load('@bytecodealliance/jco/dist/api.js');
const files = await jco.types(wit, { worldName: world, guest: true, outDir: types + '/' });
for (const [path, bytes] of Object.entries(files)) {
  await mkdir(dirname(path), { recursive: true });
  await writeFile(path, bytes);
}
