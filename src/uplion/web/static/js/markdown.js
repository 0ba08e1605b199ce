// A small, safe Markdown renderer for model answers.
//
// It builds DOM nodes and puts every piece of the answer in as text, so markup in an answer is
// shown, never run. Blocks: fenced code (with a copy button), headings, lists, quotes, rules,
// paragraphs. Inline: code, bold, italic, links and bare URLs whose scheme is http, https or
// mailto (any other link is shown as its text).

import { copy, h } from "./dom.js";

const SAFE_SCHEMES = new Set(["http:", "https:", "mailto:"]);

const FENCE = /^ {0,3}(`{3,}|~{3,})\s*([\w+#.-]*)/;
const HEADING = /^ {0,3}(#{1,6})\s+(.*?)(?:\s+#+)?\s*$/;
const RULE = /^ {0,3}([-*_])(?:\s*\1){2,}\s*$/;
const QUOTE = /^ {0,3}> ?/;
const ITEM = /^( {0,3})([-*+]|\d{1,9}[.)])\s+(.*)$/;

/** The rendering of `source` as a DocumentFragment. */
export function render(source) {
  const fragment = document.createDocumentFragment();
  const lines = String(source).replace(/\r\n?/g, "\n").split("\n");
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    if (!line.trim()) {
      i += 1;
      continue;
    }
    const fence = FENCE.exec(line);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1;
      fragment.append(codeBlock(body.join("\n"), fence[2]));
      continue;
    }
    const heading = HEADING.exec(line);
    if (heading) {
      // Answers sit under the page's own headings: "#" becomes h3.
      const level = Math.min(heading[1].length + 2, 6);
      fragment.append(h(`h${level}`, {}, inline(heading[2])));
      i += 1;
      continue;
    }
    if (RULE.test(line)) {
      fragment.append(h("hr"));
      i += 1;
      continue;
    }
    if (QUOTE.test(line)) {
      const inner = [];
      while (i < lines.length && QUOTE.test(lines[i])) inner.push(lines[i++].replace(QUOTE, ""));
      fragment.append(h("blockquote", {}, render(inner.join("\n"))));
      continue;
    }
    if (ITEM.test(line)) {
      i = list(lines, i, fragment);
      continue;
    }
    const paragraph = [];
    while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) paragraph.push(lines[i++]);
    fragment.append(h("p", {}, inline(paragraph.join("\n"))));
  }
  return fragment;
}

function startsBlock(line) {
  return FENCE.test(line) || HEADING.test(line) || RULE.test(line) || QUOTE.test(line)
    || ITEM.test(line);
}

/** One list from line `start`; appends it to `parent` and returns the next line's index. */
function list(lines, start, parent) {
  const first = ITEM.exec(lines[start]);
  const ordered = /\d/.test(first[2]);
  const element = ordered ? h("ol") : h("ul");
  if (ordered && Number.parseInt(first[2], 10) !== 1) {
    element.setAttribute("start", String(Number.parseInt(first[2], 10)));
  }
  let i = start;
  while (i < lines.length) {
    const item = ITEM.exec(lines[i]);
    if (!item || /\d/.test(item[2]) !== ordered) break;
    const body = [item[3]];
    i += 1;
    // The item goes on over indented lines and lazy continuation lines.
    while (i < lines.length) {
      const next = lines[i];
      if (!next.trim()) {
        if (i + 1 < lines.length && /^\s{2,}\S/.test(lines[i + 1])) {
          body.push("");
          i += 1;
          continue;
        }
        break;
      }
      if (/^\s{2,}/.test(next)) body.push(next.replace(/^\s{2,4}/, ""));
      else if (!startsBlock(next)) body.push(next);
      else break;
      i += 1;
    }
    const content = render(body.join("\n"));
    const only = content.childNodes.length === 1 ? content.firstChild : null;
    element.append(h("li", {}, only && only.nodeName === "P" ? [...only.childNodes] : content));
    if (i < lines.length && !lines[i].trim() && i + 1 < lines.length && ITEM.test(lines[i + 1])) {
      i += 1; // a blank line between items keeps the list going
    }
  }
  parent.append(element);
  return i;
}

function codeBlock(code, language) {
  const text = h("code", language ? { class: `language-${language}` } : {}, code);
  const status = h("span", { class: "visually-hidden", role: "status" });
  const button = h("button", {
    type: "button", class: "copy-code",
    onclick: async () => {
      const copied = await copy(code);
      status.textContent = copied ? "Code copied" : "Copy failed";
      button.textContent = copied ? "Copied" : "Copy";
    },
  }, "Copy");
  return h("div", { class: "code" },
    h("div", { class: "code-bar" }, h("span", {}, language || "code"), button, status),
    h("pre", {}, text));
}

const CODE = /(`+)([^`][\s\S]*?)\1(?!`)/y;
const LINK = /\[([^\]\n]+)\]\(\s*<?([^\s()<>]+)>?\s*\)/y;
const STRONG = /(\*\*|__)(?=\S)([\s\S]*?\S)\1/y;
const EMPHASIS = /(\*|_)(?=[^\s*_])([\s\S]*?[^\s*_])\1/y;
const BARE_URL = /https?:\/\/[^\s<>"]*[^\s<>"'.,;:!?)\]]/y;

/** Inline markup of `text` as an array of nodes; line breaks become <br>. */
export function inline(text, links = true) {
  const nodes = [];
  let plain = "";
  const flush = () => {
    if (!plain) return;
    plain.split("\n").forEach((part, index) => {
      if (index > 0) nodes.push(h("br"));
      if (part) nodes.push(document.createTextNode(part));
    });
    plain = "";
  };
  let i = 0;
  while (i < text.length) {
    const found = match(text, i, links);
    if (found === null) {
      plain += text[i];
      i += 1;
      continue;
    }
    flush();
    nodes.push(found.node);
    i = found.end;
  }
  flush();
  return nodes;
}

function match(text, i, links) {
  const char = text[i];
  const previous = i > 0 ? text[i - 1] : " ";
  if (char === "`") {
    return sticky(CODE, text, i, (m) => h("code", {}, m[2].length > 2 && m[2].startsWith(" ")
      && m[2].endsWith(" ") ? m[2].slice(1, -1) : m[2]));
  }
  if (char === "[" && links) return sticky(LINK, text, i, (m) => link(inline(m[1], false), m[2]));
  if (char === "*" || (char === "_" && !/\w/.test(previous))) {
    const strong = sticky(STRONG, text, i, (m) => h("strong", {}, inline(m[2], links)));
    if (strong && (char === "*" || !/\w/.test(text[strong.end] || ""))) return strong;
    const emphasis = sticky(EMPHASIS, text, i, (m) => h("em", {}, inline(m[2], links)));
    if (emphasis && (char === "*" || !/\w/.test(text[emphasis.end] || ""))) return emphasis;
    return null;
  }
  if (char === "h" && links && !/\w/.test(previous)) {
    return sticky(BARE_URL, text, i, (m) => link([m[0]], m[0]));
  }
  return null;
}

function sticky(pattern, text, i, build) {
  pattern.lastIndex = i;
  const m = pattern.exec(text);
  return m ? { node: build(m), end: i + m[0].length } : null;
}

/** A link if `target` is an absolute URL with a safe scheme; its text otherwise. */
function link(content, target) {
  let url = null;
  try {
    url = new URL(target);
  } catch {
    url = null;
  }
  if (url === null || !SAFE_SCHEMES.has(url.protocol)) return h("span", {}, content);
  return h("a", { href: url.href, rel: "noopener noreferrer nofollow", target: "_blank" }, content);
}
