// The customer's graph drawn with cytoscape.js, and the evidence that joins
// two values: the shortest path between them over the graph's edges.

import cytoscape from "./vendor/cytoscape-3.35.0.esm.min.js";
import { label } from "./mask.js";

const STYLE = [
  {
    selector: "node",
    style: {
      label: "data(label)",
      "font-size": 10,
      "text-valign": "bottom",
      "text-margin-y": 3,
      color: "#1f2933",
      width: 18,
      height: 18,
    },
  },
  { selector: "node[kind = 'contact']", style: { shape: "round-rectangle", "background-color": "#52606d" } },
  { selector: "node[kind = 'contact'][!live]", style: { "background-color": "#cbd2d9" } },
  { selector: "node[kind = 'email']", style: { "background-color": "#2f80ed" } },
  { selector: "node[kind = 'phoneNumber']", style: { "background-color": "#27ae60" } },
  { selector: "node[?bridge]", style: { "background-color": "#d64545", "border-width": 3, "border-color": "#8a1c1c", width: 24, height: 24 } },
  { selector: "node.chosen", style: { "border-width": 4, "border-color": "#f2994a" } },
  { selector: "edge", style: { width: 1.5, "line-color": "#9aa5b1", "curve-style": "bezier" } },
  { selector: "edge[kind = 'merged']", style: { "line-style": "dashed", "line-color": "#7b61ff", width: 2 } },
  { selector: "edge[kind = 'legacyLink']", style: { "line-style": "dotted", "line-color": "#52606d", width: 2 } },
  { selector: "edge.path", style: { "line-color": "#f2994a", width: 4 } },
  { selector: "node.path", style: { "border-width": 3, "border-color": "#f2994a" } },
];

export function draw(container, documentBody, onChoose) {
  const elements = [
    ...documentBody.nodes.map((node) => ({
      data: { ...node, label: nodeLabel(node) },
    })),
    ...documentBody.edges.map((edge, index) => ({
      data: { ...edge, id: `edge${index}` },
    })),
  ];
  const cy = cytoscape({
    container,
    elements,
    style: STYLE,
    wheelSensitivity: 0.3,
    layout: { name: "preset" },
  });
  cy.on("tap", "node[kind != 'contact']", (event) => onChoose(event.target.id()));
  return cy;
}

export function layout(cy) {
  return new Promise((resolve) => {
    const big = cy.nodes().length > 150;
    const running = cy.layout(big
      ? { name: "concentric", animate: false, concentric: (node) => node.degree(), levelWidth: () => 2 }
      : { name: "cose", animate: false, randomize: true, numIter: 600, nodeRepulsion: () => 6000 });
    running.one("layoutstop", () => resolve());
    running.run();
  });
}

export function relabel(cy) {
  cy.nodes().forEach((node) => node.data("label", nodeLabel(node.data())));
}

function nodeLabel(node) {
  if (node.kind === "contact") {
    return node.live ? `#${node.contactId}` : `#${node.contactId} (not here)`;
  }
  return label(node.kind, node.value);
}

export function choose(cy, ids) {
  cy.elements().removeClass("path chosen");
  ids.forEach((id) => cy.getElementById(id).addClass("chosen"));
}

// The sentences that say how two values are joined, and the path drawn.
export function explain(cy, from, to) {
  const found = cy.elements().aStar({
    root: cy.getElementById(from),
    goal: cy.getElementById(to),
    directed: false,
  });
  if (!found.found) {
    return ["Nothing joins these two values."];
  }
  found.path.addClass("path");
  const nodes = found.path.nodes().map((node) => node.data());
  const edges = found.path.edges().map((edge) => edge.data());
  const sentences = [];
  for (let i = 0; i < edges.length; i += 1) {
    const [here, next, edge] = [nodes[i], nodes[i + 1], edges[i]];
    if (edge.kind === "merged") {
      sentences.push(`Merge event ${edge.eventId} (${edge.at}) joined ${name(here)} and ${name(next)}: one order carried both.`);
    } else if (edge.kind === "legacyLink") {
      sentences.push(`Contacts ${here.contactId} and ${next.contactId} were linked before the ledger.`);
    } else if (next.kind === "contact" && i + 1 < edges.length && edges[i + 1].kind === "holds") {
      sentences.push(`Order ${next.contactId} carried both ${name(here)} and ${name(nodes[i + 2])}.`);
      i += 1;
    } else {
      const [row, value] = here.kind === "contact" ? [here, next] : [next, here];
      sentences.push(`Contact ${row.contactId} holds ${name(value)}.`);
    }
  }
  return sentences;
}

function name(node) {
  if (node.kind === "contact") {
    return `contact ${node.contactId}`;
  }
  const kind = node.kind === "email" ? "email" : "phone";
  return `${kind} ${label(node.kind, node.value)}`;
}
