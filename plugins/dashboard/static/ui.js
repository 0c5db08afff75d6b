// Small DOM helpers: the page builds elements with textContent only (never innerHTML), so
// label values from the data cannot inject markup.

export function $(selector) {
  return document.querySelector(selector);
}

export function clear(node) {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function el(tag, attrs, children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === false || v === null || v === undefined) continue;
    if (k === "class") node.className = v;
    else if (k === "selected" || k === "hidden" || k === "disabled") node[k] = Boolean(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  const list = Array.isArray(children) ? children : children === undefined ? [] : [children];
  for (const c of list) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

export function setStatus(text, isError = false) {
  const s = $("#status");
  s.textContent = text;
  s.classList.toggle("error", Boolean(isError && text));
}
