// Values on screen are masked until support chooses to show one.

const shown = new Set();

export function reveal(value, on) {
  if (on) {
    shown.add(value);
  } else {
    shown.delete(value);
  }
}

export function isShown(value) {
  return shown.has(value);
}

export function forgetShown() {
  shown.clear();
}

export function masked(kind, value) {
  if (kind === "email") {
    const at = value.lastIndexOf("@");
    const local = value.slice(0, at);
    const domain = value.slice(at + 1);
    const dot = domain.lastIndexOf(".");
    const tld = dot >= 0 ? domain.slice(dot) : "";
    return `${local.slice(0, 1)}•••@${domain.slice(0, 1)}•••${tld}`;
  }
  return `•••${value.slice(-2)}`;
}

export function label(kind, value) {
  return isShown(value) ? value : masked(kind, value);
}
