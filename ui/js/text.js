// Message text as the page shows it: plain text (never parsed as HTML) in which web links
// become links. A link opens nothing by itself: clicking it asks first (views/link-dialog.js),
// then the backend hands an http(s) address to the system browser. No previews are fetched:
// they would tell third parties who reads what.

import { h } from "./util.js";

/** Longest link made clickable, in characters (the backend refuses longer ones too). */
const MAX_LINK_CHARS = 2048;

// http(s):// then anything up to whitespace or a character that cannot end a link here.
const URL_RE = /\bhttps?:\/\/[^\s<>"]+/gi;
// Punctuation that ends a sentence rather than a link ("see https://x.org/a.").
const TRAILING = /[.,;:!?'’)\]}*_]$/;

function count(text, ch) {
  return text.split(ch).length - 1;
}

/** Splits `text` into strings and link descriptions `{url}`. */
export function splitLinks(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(URL_RE)) {
    let url = match[0];
    // Drop trailing punctuation one character at a time; a ")" stays when it closes a "(" of
    // the link itself (Wikipedia-style addresses).
    while (TRAILING.test(url)) {
      if (url.endsWith(")") && count(url, ")") <= count(url, "(")) break;
      url = url.slice(0, -1);
    }
    if (url.length <= "https://".length || url.length > MAX_LINK_CHARS) continue;
    if (match.index > last) parts.push(text.slice(last, match.index));
    parts.push({ url });
    last = match.index + url.length;
  }
  if (last < text.length) parts.push(text.slice(last));
  return parts;
}

/**
 * The body of a message as nodes: text, and `<a class="link">` for web links. `onLink(url)` is
 * called on activation instead of navigating.
 */
export function messageText(text, onLink) {
  return splitLinks(text).map((part) => {
    if (typeof part === "string") return part;
    return h("a", {
      class: "link",
      href: part.url,
      rel: "noopener noreferrer nofollow",
      title: `Open ${part.url}`,
      onclick: (e) => {
        e.preventDefault();
        onLink(part.url);
      },
    }, part.url);
  });
}
