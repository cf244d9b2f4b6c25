// The support console: find a customer, see its graph and history, and
// detach, erase or block, each previewed with a dry run before it is done.

import { call, forgetKey, keepKey, key, Problem } from "./api.js";
import { choose, draw, explain, layout, relabel } from "./graph.js";
import { forgetShown, isShown, label, reveal } from "./mask.js";

const $ = (selector) => document.querySelector(selector);

const state = {
  customerId: null,
  graph: null,
  cy: null,
  chosen: [],
  next: null,
  searchStarted: 0,
};

function element(tag, text, attributes = {}) {
  const made = document.createElement(tag);
  if (text !== undefined) {
    made.textContent = text;
  }
  for (const [name, value] of Object.entries(attributes)) {
    made.setAttribute(name, value);
  }
  return made;
}

function showError(error) {
  const detail = error instanceof Problem ? error.message : `Unexpected error: ${error.message}`;
  $("#error").textContent = detail;
  $("#error").hidden = false;
}

function clearError() {
  $("#error").hidden = true;
  $("#error").textContent = "";
}

function note(text) {
  $("#search-note").textContent = text;
}

function guarded(action) {
  return async (event) => {
    if (event) {
      event.preventDefault();
    }
    clearError();
    try {
      await action(event);
    } catch (error) {
      showError(error);
    }
  };
}

function showKeyState() {
  const kept = key() !== null;
  $("#key-form").hidden = kept;
  $("#key-status").hidden = !kept;
}

$("#key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  keepKey($("#key").value);
  $("#key").value = "";
  showKeyState();
  $("#search-value").focus();
});

$("#forget-key").addEventListener("click", () => {
  forgetKey();
  showKeyState();
  $("#key").focus();
});

$("#search-form").addEventListener("submit", guarded(async () => {
  state.searchStarted = performance.now();
  $("#graph").dataset.state = "searching";
  const kind = $("#search-kind").value;
  const value = $("#search-value").value.trim();
  $("#results").replaceChildren();
  note("");
  if (kind === "id") {
    if (!/^[0-9]+$/.test(value)) {
      throw new Problem(400, "A contact id is a whole number, such as 17.");
    }
    await openCustomer(Number(value));
    return;
  }
  let found;
  try {
    found = (await call("POST", "/customers/lookup", { [kind]: value })).contacts;
  } catch (error) {
    if (!(error instanceof Problem) || error.status !== 422) {
      throw error;
    }
    found = (await call("POST", "/customers/holders", { [kind]: value })).contacts;
    note(`${error.message} Showing the customers that still hold it.`);
  }
  if (found.length === 0) {
    note("No customer holds that value.");
    $("#customer").hidden = true;
    return;
  }
  listCustomers(found);
  await openCustomer(found[0].primaryContactId);
}));

function listCustomers(contacts) {
  $("#results").replaceChildren(...contacts.map((contact) => {
    const item = element("li");
    const open = element("button", `Customer ${contact.primaryContactId}`, { type: "button" });
    open.addEventListener("click", guarded(() => openCustomer(contact.primaryContactId)));
    item.append(open, ` ${contact.emails.length} email(s), ${contact.phoneNumbers.length} phone(s), ${1 + contact.secondaryContactIds.length} row(s)`);
    return item;
  }));
}

async function openCustomer(contactId) {
  const [customer, graph, history] = await Promise.all([
    call("GET", `/customers/${contactId}`),
    call("GET", `/customers/${contactId}/graph`),
    call("GET", `/customers/${contactId}/history?limit=20`),
  ]);
  if (state.customerId !== graph.customerId) {
    forgetShown();
  }
  state.customerId = graph.customerId;
  state.graph = graph;
  state.chosen = [];
  $("#customer").hidden = false;
  $("#customer-title").textContent = `Customer ${graph.customerId}`;
  showCard(customer.contact, graph);
  showValues();
  showRows();
  $("#explain").textContent = "";
  $("#history").replaceChildren();
  showHistory(history);
  await drawGraph();
}

function showCard(contact, graph) {
  const rows = graph.nodes.filter((node) => node.kind === "contact" && node.live);
  const created = rows.map((row) => row.createdAt).sort();
  const updated = rows.map((row) => row.updatedAt).sort();
  const entries = [
    ["Customer id", String(contact.primaryContactId)],
    ["Primary contact", `#${contact.primaryContactId}`],
    ["Emails", String(contact.emails.length)],
    ["Phone numbers", String(contact.phoneNumbers.length)],
    ["Rows", String(rows.length)],
    ["Created", created[0] || "—"],
    ["Last updated", updated[updated.length - 1] || "—"],
    ["Bridges", String(graph.nodes.filter((node) => node.bridge).length)],
  ];
  $("#card").replaceChildren(...entries.flatMap(([term, value]) => [element("dt", term), element("dd", value)]));
}

function valueNodes() {
  return state.graph.nodes.filter((node) => node.kind !== "contact");
}

function showValues() {
  $("#values tbody").replaceChildren(...valueNodes().map((node) => {
    const row = element("tr", undefined, { "data-node": node.id });
    if (node.bridge) {
      row.classList.add("bridge");
    }
    const kind = node.kind === "email" ? "email" : "phone";
    const text = element("span", label(node.kind, node.value), { class: "value" });
    const show = element("button", isShown(node.value) ? "Hide" : "Show", {
      type: "button",
      class: "reveal",
      "aria-pressed": String(isShown(node.value)),
      "aria-label": `${isShown(node.value) ? "Hide" : "Show"} this ${kind}`,
    });
    show.addEventListener("click", () => {
      reveal(node.value, !isShown(node.value));
      showValues();
      relabel(state.cy);
      explainChosen();
      $(`#values tr[data-node="${node.id}"] .reveal`).focus();
    });
    const pick = element("input", undefined, {
      type: "checkbox",
      class: "choose",
      "aria-label": `Select this ${kind} to explain what joins it to another`,
    });
    pick.checked = state.chosen.includes(node.id);
    pick.addEventListener("change", () => toggleChosen(node.id));
    const detach = element("button", "Detach…", { type: "button", class: "detach" });
    detach.addEventListener("click", guarded(() => openDetach(node)));
    const valueCell = element("td");
    valueCell.append(text, " ", show);
    const bridgeCell = element("td", node.bridge ? "bridge" : "—");
    if (node.bridge) {
      bridgeCell.classList.add("bridge-mark");
    }
    const pickCell = element("td");
    pickCell.append(pick);
    const actionCell = element("td");
    actionCell.append(detach);
    row.append(valueCell, element("td", kind), bridgeCell, pickCell, actionCell);
    return row;
  }));
}

function showRows() {
  const rows = state.graph.nodes.filter((node) => node.kind === "contact" && node.live);
  $("#rows tbody").replaceChildren(...rows.map((row) => {
    const line = element("tr");
    line.append(
      element("td", `#${row.contactId}`),
      element("td", row.linkPrecedence),
      element("td", row.createdAt),
      element("td", row.updatedAt),
    );
    return line;
  }));
}

async function drawGraph() {
  const container = $("#graph");
  if (state.cy) {
    state.cy.destroy();
  }
  container.dataset.state = "drawing";
  state.cy = draw(container, state.graph, toggleChosen);
  await layout(state.cy);
  const values = valueNodes();
  const bridges = values.filter((node) => node.bridge).length;
  const rows = state.graph.nodes.filter((node) => node.kind === "contact").length;
  container.setAttribute(
    "aria-label",
    `Graph of customer ${state.graph.customerId}: ${rows} rows, ${values.length} values, ${bridges} of them bridges. The tables beside it say the same in words.`,
  );
  container.dataset.nodes = String(state.cy.nodes().length);
  container.dataset.edges = String(state.cy.edges().length);
  container.dataset.bridges = String(state.cy.nodes("[?bridge]").length);
  container.dataset.drawMs = String(Math.round(performance.now() - state.searchStarted));
  container.dataset.state = "drawn";
}

function toggleChosen(nodeId) {
  if (state.chosen.includes(nodeId)) {
    state.chosen = state.chosen.filter((id) => id !== nodeId);
  } else {
    state.chosen = [...state.chosen, nodeId].slice(-2);
  }
  document.querySelectorAll("#values tbody tr").forEach((row) => {
    row.querySelector(".choose").checked = state.chosen.includes(row.dataset.node);
  });
  explainChosen();
}

function explainChosen() {
  choose(state.cy, state.chosen);
  if (state.chosen.length < 2) {
    $("#explain").textContent = state.chosen.length
      ? "Select a second value to see what joins them."
      : "";
    return;
  }
  const [from, to] = state.chosen;
  $("#explain").textContent = explain(state.cy, from, to).join(" ");
}

function showHistory(page) {
  $("#history").append(...page.events.map((event) => {
    const parts = [`#${event.id} ${event.type}`, event.at];
    if (event.contactIds.length) {
      parts.push(`contacts ${event.contactIds.join(", ")}`);
    }
    if (event.email) {
      parts.push(`email ${label("email", event.email)}`);
    }
    if (event.phoneNumber) {
      parts.push(`phone ${label("phoneNumber", event.phoneNumber)}`);
    }
    if (event.reason) {
      parts.push(`reason: ${event.reason}`);
    }
    return element("li", parts.join(" · "));
  }));
  state.next = page.next;
  $("#history-more").hidden = page.next === null;
}

$("#history-more").addEventListener("click", guarded(async () => {
  const page = await call("GET", `/customers/${state.customerId}/history?after=${state.next}&limit=20`);
  showHistory(page);
}));

function describe(contacts) {
  if (contacts.length === 0) {
    return "no customer: every row held only this value and is deleted";
  }
  const each = contacts.map((contact) => `customer ${contact.primaryContactId} (${1 + contact.secondaryContactIds.length} row(s), ${contact.emails.length} email(s), ${contact.phoneNumbers.length} phone(s))`);
  return `${contacts.length} customer(s): ${each.join("; ")}`;
}

function dialogError(selector, error) {
  const shown = $(selector);
  shown.textContent = error instanceof Problem ? error.message : `Unexpected error: ${error.message}`;
  shown.hidden = false;
}

let detaching = null;

async function openDetach(node) {
  detaching = node;
  const kind = node.kind === "email" ? "email" : "phone";
  $("#detach-value").textContent = `Take the ${kind} ${label(node.kind, node.value)} away from customer ${state.customerId}.`;
  $("#detach-block").checked = false;
  $("#detach-reason").value = "";
  $("#detach-error").hidden = true;
  $("#detach-preview").textContent = "Previewing…";
  $("#detach-confirm").disabled = true;
  $("#detach-dialog").showModal();
  try {
    const preview = await call("POST", `/customers/${state.customerId}/detach`, { [node.kind]: node.value, dryRun: true });
    $("#detach-preview").textContent = `Preview (nothing changed yet): the rows would form ${describe(preview.contacts)}.`;
    $("#detach-confirm").disabled = false;
  } catch (error) {
    $("#detach-preview").textContent = "";
    dialogError("#detach-error", error);
  }
}

$("#detach-confirm").addEventListener("click", async () => {
  const body = { [detaching.kind]: detaching.value };
  if ($("#detach-block").checked) {
    body.block = true;
  }
  const reason = $("#detach-reason").value.trim();
  if (reason) {
    body.reason = reason;
  }
  try {
    $("#detach-confirm").disabled = true;
    const done = await call("POST", `/customers/${state.customerId}/detach`, body);
    $("#detach-dialog").close();
    clearError();
    state.searchStarted = performance.now();
    $("#graph").dataset.state = "searching";
    note(`Detached. The rows now form ${describe(done.contacts)}.`);
    listCustomers(done.contacts);
    if (done.contacts.length === 0) {
      $("#customer").hidden = true;
      return;
    }
    const kept = done.contacts.find((contact) => contact.primaryContactId === state.customerId) || done.contacts[0];
    await openCustomer(kept.primaryContactId);
  } catch (error) {
    dialogError("#detach-error", error);
  }
});

$("#erase-open").addEventListener("click", guarded(async () => {
  const id = state.customerId;
  $("#erase-typed").value = "";
  $("#erase-suppress").checked = false;
  $("#erase-suppress-label").hidden = true;
  $("#erase-error").hidden = true;
  $("#erase-confirm").disabled = true;
  $("#erase-preview").textContent = "Previewing…";
  $("#erase-dialog").showModal();
  try {
    const preview = await call("DELETE", `/customers/${id}?dryRun=true`);
    $("#erase-preview").textContent = `Preview (nothing changed yet): erasing deletes contacts ${preview.erasedContactIds.join(", ")} and every copy of their values in the ledger. It cannot be undone.`;
  } catch (error) {
    $("#erase-preview").textContent = "";
    dialogError("#erase-error", error);
    return;
  }
  try {
    await call("DELETE", `/customers/${id}?dryRun=true&suppress=true`);
    $("#erase-suppress-label").hidden = false;
  } catch {
    $("#erase-suppress-label").hidden = true;
  }
}));

$("#erase-typed").addEventListener("input", () => {
  $("#erase-confirm").disabled = $("#erase-typed").value.trim() !== String(state.customerId);
});

$("#erase-confirm").addEventListener("click", async () => {
  const id = state.customerId;
  if ($("#erase-typed").value.trim() !== String(id)) {
    return;
  }
  const query = $("#erase-suppress").checked ? "?suppress=true" : "";
  try {
    $("#erase-confirm").disabled = true;
    const done = await call("DELETE", `/customers/${id}${query}`);
    $("#erase-dialog").close();
    clearError();
    $("#customer").hidden = true;
    $("#results").replaceChildren();
    state.customerId = null;
    note(`Erased customer ${id}: contacts ${done.erasedContactIds.join(", ")} are deleted${done.suppressed ? `, ${done.suppressed} value(s) suppressed` : ""}.`);
  } catch (error) {
    dialogError("#erase-error", error);
  }
});

let blocking = null;

$("#block-form").addEventListener("submit", guarded(async () => {
  const kind = $("#block-kind").value;
  const value = $("#block-value").value.trim();
  blocking = { [kind]: value };
  $("#block-error").hidden = true;
  $("#block-confirm").disabled = true;
  $("#block-preview").textContent = "Previewing…";
  $("#block-dialog").showModal();
  try {
    const holders = (await call("POST", "/customers/holders", blocking)).contacts;
    const held = holders.length
      ? `${holders.length} customer(s) hold it now (${holders.map((contact) => contact.primaryContactId).join(", ")}); their rows keep it: detach it from them to take it away.`
      : "No customer holds it now.";
    $("#block-preview").textContent = `Preview (nothing changed yet): from now on no request matches or stores it. ${held}`;
    $("#block-confirm").disabled = false;
  } catch (error) {
    $("#block-preview").textContent = "";
    dialogError("#block-error", error);
  }
}));

$("#block-confirm").addEventListener("click", async () => {
  try {
    $("#block-confirm").disabled = true;
    const added = await call("POST", "/blocked-values", blocking);
    $("#block-dialog").close();
    $("#block-value").value = "";
    note(`Blocked: blocked value ${added.id}.`);
  } catch (error) {
    dialogError("#block-error", error);
  }
});

showKeyState();
