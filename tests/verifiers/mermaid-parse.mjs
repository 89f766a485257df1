// Parses each Mermaid file named in argv with mermaid itself (the library GitHub renders
// diagrams with), in a jsdom window; prints "ok FILE TYPE" or the parse error, exits 1 on any.
import { JSDOM } from "jsdom";
import fs from "node:fs";

const dom = new JSDOM("<!doctype html><html><body></body></html>");
globalThis.window = dom.window;
globalThis.document = dom.window.document;
const { default: mermaid } = await import("mermaid");
mermaid.initialize({ startOnLoad: false });
for (const file of process.argv.slice(2)) {
  try {
    const r = await mermaid.parse(fs.readFileSync(file, "utf8"));
    console.log(`ok ${file} ${r.diagramType}`);
  } catch (e) {
    console.log(`fail ${file}: ${String(e.message || e)}`);
    process.exitCode = 1;
  }
}
