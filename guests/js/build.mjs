// Build every example handler (a directory with an app.js) into
// dist/<name>.wasm against weir's WIT package, world `handler`.
// Usage: npm run build [-- name ...]; WEIR_JS_OUT=dir overrides dist/.
import { componentize } from '@bytecodealliance/componentize-js';
import { mkdir, readdir, stat, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const wit = resolve(here, '../../wit');
const out = resolve(process.env.WEIR_JS_OUT ?? join(here, 'dist'));

async function examples() {
  const names = [];
  for (const entry of await readdir(here)) {
    if (entry === 'node_modules' || entry === 'dist') continue;
    try {
      if ((await stat(join(here, entry, 'app.js'))).isFile()) names.push(entry);
    } catch {
      // not an example
    }
  }
  return names.sort();
}

// componentize-js resolves an app's relative imports (`../weir.js`) from
// the working directory: build from here.
process.chdir(here);
const wanted = process.argv.slice(2);
const names = wanted.length > 0 ? wanted : await examples();
await mkdir(out, { recursive: true });
for (const name of names) {
  const started = Date.now();
  const { component } = await componentize({
    sourcePath: join(here, name, 'app.js'),
    witPath: wit,
    worldName: 'handler',
    // weir links no HTTP: without this the component imports wasi:http
    // (for `fetch`) and `weir check` refuses it.
    disableFeatures: ['http', 'fetch-event'],
  });
  const path = join(out, `${name}.wasm`);
  await writeFile(path, component);
  const mb = (component.byteLength / 1e6).toFixed(1);
  console.log(`built ${path} (${mb} MB) in ${((Date.now() - started) / 1000).toFixed(1)} s`);
}
