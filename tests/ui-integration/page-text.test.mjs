// The page's own pure modules: which parts of a message become links (ui/js/text.js), and the
// one table of keyboard shortcuts (ui/js/shortcuts.js) that both the keys and the help use.
import { test } from "node:test";
import assert from "node:assert/strict";
import { splitLinks } from "../../ui/js/text.js";
import { SHORTCUTS, keyLabels } from "../../ui/js/shortcuts.js";
import { formatSize } from "../../ui/js/util.js";

const links = (text) => splitLinks(text).filter((p) => typeof p !== "string").map((p) => p.url);

test("web links become links, without the punctuation around them", () => {
  assert.deepEqual(links("see https://example.com/a."), ["https://example.com/a"]);
  assert.deepEqual(links("x https://a.b/c?d=1#e, y"), ["https://a.b/c?d=1#e"]);
  assert.deepEqual(links("(see http://x.org/y)"), ["http://x.org/y"]);
  assert.deepEqual(links("https://en.wikipedia.org/wiki/Foo_(bar)."), ["https://en.wikipedia.org/wiki/Foo_(bar)"]);
  assert.deepEqual(links("مرحبا https://example.org/عربي"), ["https://example.org/عربي"]);
});

test("nothing but http and https is ever a link, and the text is kept whole", () => {
  for (const text of ["javascript:alert(1)", "file:///etc/passwd", "http://", "ftp://x.org", "<a href=x>y</a>"]) {
    assert.deepEqual(links(text), [], text);
  }
  const text = "a https://x.org/ b https://y.org c";
  const joined = splitLinks(text).map((p) => (typeof p === "string" ? p : p.url)).join("");
  assert.equal(joined, text);
  assert.deepEqual(links(`https://x.org/${"a".repeat(5000)}`), [], "overlong links stay text");
});

test("every shortcut has a distinct key and a label for the help", () => {
  const keys = SHORTCUTS.map((s) => s.keys);
  assert.equal(new Set(keys).size, keys.length);
  assert.equal(new Set(SHORTCUTS.map((s) => s.id)).size, SHORTCUTS.length);
  for (const s of SHORTCUTS) assert.ok(s.label.length > 0, s.id);
  assert.deepEqual(keyLabels("Ctrl+/"), ["Ctrl", "/"]);
  assert.deepEqual(keyLabels("Alt+ArrowDown"), ["Alt", "↓"]);
  assert.deepEqual(keyLabels("Ctrl+,"), ["Ctrl", ","]);
});

test("file sizes read like the file manager's (decimal units)", () => {
  assert.equal(formatSize(0), "0 bytes");
  assert.equal(formatSize(999), "999 bytes");
  assert.equal(formatSize(1000), "1.0 KB");
  assert.equal(formatSize(1_234_567), "1.2 MB");
  assert.equal(formatSize(50_000_000), "50.0 MB");
  assert.equal(formatSize(123_456_789), "123 MB");
  assert.equal(formatSize(2 * 1024 ** 3), "2.1 GB");
});

test("every id in the page is unique, and every id the scripts look up exists", async () => {
  const { readFile, readdir } = await import("node:fs/promises");
  const root = new URL("../../ui/", import.meta.url);
  const html = await readFile(new URL("index.html", root), "utf8");
  const ids = [...html.matchAll(/\sid="([^"]+)"/g)].map((m) => m[1]);
  const seen = new Set();
  const twice = ids.filter((id) => (seen.has(id) ? true : (seen.add(id), false)));
  // Two elements with one id: getElementById returns the first, and the other's script binds
  // to the wrong element (a Cancel that never closes its dialog).
  assert.deepEqual(twice, [], "ids used twice in ui/index.html");
  const scripts = [];
  for (const dir of [new URL("js/", root), new URL("js/views/", root)]) {
    for (const name of (await readdir(dir)).filter((n) => n.endsWith(".js"))) {
      scripts.push([name, await readFile(new URL(name, dir), "utf8")]);
    }
  }
  // Elements the scripts build themselves (`h("textarea", { id: "…" })`) exist too.
  const built = new Set(scripts.flatMap(([, js]) => [...js.matchAll(/\bid: "([\w-]+)"/g)].map((m) => m[1])));
  for (const [name, js] of scripts) {
    for (const m of js.matchAll(/\$\("([A-Za-z][\w-]*)"\)/g)) {
      assert.ok(seen.has(m[1]) || built.has(m[1]), `${name} looks up #${m[1]}, which the page does not have`);
    }
  }
});
