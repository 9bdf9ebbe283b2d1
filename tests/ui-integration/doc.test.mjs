// docs/ui-integration.md shows these examples verbatim and names every event of the contract.
import { test } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { Event } from "../../ui/js/contract.js";

const here = new URL(".", import.meta.url);
const doc = readFileSync(new URL("../../docs/ui-integration.md", here), "utf8");

test("the doc shows the tested examples as they are", () => {
  for (const file of ["messages.mjs", "use-lattice-react.mjs", "use-lattice-vue.mjs"]) {
    const source = readFileSync(new URL(file, here), "utf8").trim();
    assert.ok(doc.includes(source), `docs/ui-integration.md does not show ${file} as it is`);
  }
});

test("the doc names every event of the contract", () => {
  for (const name of Object.values(Event)) {
    assert.ok(doc.includes(`\`${name}\``), `docs/ui-integration.md does not name ${name}`);
  }
});
