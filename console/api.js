// Calls to the service with the API key of this tab (sessionStorage: it goes
// when the tab is closed). Every error is the problem document's detail.

const KEY = "identity-console-key";

export function key() {
  return sessionStorage.getItem(KEY);
}

export function keepKey(value) {
  sessionStorage.setItem(KEY, value);
}

export function forgetKey() {
  sessionStorage.removeItem(KEY);
}

export class Problem extends Error {
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  const stored = key();
  if (stored) {
    headers.Authorization = `Bearer ${stored}`;
  }
  const options = { method, headers, cache: "no-store" };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
    options.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, options);
  } catch {
    throw new Problem(0, "The service could not be reached. Nothing was changed.");
  }
  const text = await response.text();
  let answer = null;
  try {
    answer = text ? JSON.parse(text) : null;
  } catch {
    answer = null;
  }
  if (!response.ok) {
    const detail = answer && typeof answer.detail === "string"
      ? answer.detail
      : `The service answered ${response.status} ${response.statusText}.`;
    throw new Problem(response.status, detail);
  }
  return answer;
}
