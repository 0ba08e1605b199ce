// Building DOM nodes without HTML strings: text always goes in as text, never as markup.

const SVG_NS = "http://www.w3.org/2000/svg";

function build(element, attrs, children) {
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") {
      element.addEventListener(key.slice(2), value);
    } else {
      element.setAttribute(key, value === true ? "" : String(value));
    }
  }
  append(element, children);
  return element;
}

/** An HTML element: `h("button", {type: "button", onclick}, "Save")`. */
export function h(tag, attrs, ...children) {
  return build(document.createElement(tag), attrs, children);
}

/** An SVG element, same calling convention as `h`. */
export function s(tag, attrs, ...children) {
  return build(document.createElementNS(SVG_NS, tag), attrs, children);
}

/** Append children (nodes, strings, numbers, nested arrays; null and false are skipped). */
export function append(element, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    element.append(child instanceof Node ? child : String(child));
  }
  return element;
}

/** Replace every child of `element`. */
export function replace(element, ...children) {
  element.replaceChildren();
  return append(element, children);
}

export const $ = (selector, root = document) => root.querySelector(selector);

/** Give each body cell of `table` its column's heading as `data-label` (phone-sized cards). */
export function labelCells(table) {
  const headings = [...table.tHead.rows[0].cells].map((cell) => cell.textContent.trim());
  for (const row of table.tBodies[0].rows) {
    [...row.cells].forEach((cell, i) => {
      if (headings[i] && cell.colSpan === 1) cell.setAttribute("data-label", headings[i]);
    });
  }
}

/** Copy text to the clipboard; falls back to selecting it in `field` where the API is missing. */
export async function copy(text, field) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    if (field) {
      field.focus();
      field.select();
    }
    return false;
  }
}
