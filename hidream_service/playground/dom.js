// Building elements without innerHTML, so that nothing a request carries (prompts, logs, errors)
// is ever read as markup.

/** element("a", {href: url, className: "x", dataset: {id: 1}}, "text", child) */
export function element(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null) continue;
    if (key === "dataset") Object.assign(node.dataset, value);
    else if (key in node) node[key] = value;
    else node.setAttribute(key, value);
  }
  node.append(...children.filter((child) => child !== null && child !== undefined && child !== false));
  return node;
}

/** "40 ms", "1.2 s", "35 s", "2 min 5 s" */
export function formatSeconds(seconds) {
  if (seconds === null || seconds === undefined) return "";
  if (seconds < 1) return `${Math.round(seconds * 1000)} ms`;
  if (seconds < 10) return `${seconds.toFixed(1)} s`;
  if (seconds < 60) return `${Math.round(seconds)} s`;
  const minutes = Math.floor(seconds / 60);
  return `${minutes} min ${Math.round(seconds - minutes * 60)} s`;
}

export function formatBytes(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MB`;
}

/** "just now", "12 s ago", "5 min ago", else the local time. */
export function formatAge(isoTime) {
  const seconds = (Date.now() - Date.parse(isoTime)) / 1000;
  if (seconds < 2) return "just now";
  if (seconds < 60) return `${Math.round(seconds)} s ago`;
  if (seconds < 3600) return `${Math.round(seconds / 60)} min ago`;
  return new Date(isoTime).toLocaleString();
}

export function toast(message, kind = "info") {
  const box = document.getElementById("toasts");
  const note = element("div", { className: `toast ${kind}`, role: "status" }, message);
  box.append(note);
  setTimeout(() => note.remove(), 4000);
}

export async function copyText(text) {
  try {
    await navigator.clipboard.writeText(text);
    return true;
  } catch {
    // Clipboard access needs a secure context or permission; fall back to a selection copy.
    const area = element("textarea", { value: text, className: "offscreen" });
    document.body.append(area);
    area.select();
    const copied = document.execCommand("copy");
    area.remove();
    return copied;
  }
}
