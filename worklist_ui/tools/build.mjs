// Bundles the pages' scripts and styles into the folder given (static/dist by default) with
// esbuild, from the packages package-lock.json pins. The output is committed, so `make run`
// needs no Node.js; tests/ui/test_assets.py builds again into a temporary folder and
// compares the bytes, so the committed files are always what this lock file produces.
import { build } from "esbuild";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const root = path.resolve(here, "..");
const outdir = path.resolve(process.cwd(), process.argv[2] ?? "static/dist");

await build({
  absWorkingDir: root,
  entryPoints: { app: "src/app.js", viewer: "src/viewer.js", modeler: "src/modeler.js", diff: "src/diff.js" },
  bundle: true,
  format: "iife",
  minify: true,
  target: ["chrome110", "firefox110", "safari16"],
  outdir,
  loader: { ".woff": "file", ".woff2": "file", ".eot": "file", ".ttf": "file", ".svg": "file" },
  assetNames: "[name]",
  legalComments: "none",
  logLevel: "warning",
});
