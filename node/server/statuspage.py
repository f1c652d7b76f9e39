"""The live status page at `/`: plain HTML and a little JavaScript, nothing fetched from elsewhere.

It polls `/status.json` twice a second and redraws in place: the nodes as
the serving node sees them (the leader's row marked), the running jobs with
a progress bar each and, on the leader's page, how many shards each node
has computed, and the last jobs of the job table. No build step, no
CDN, no framework: a page an air-gapped operator can open.
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>distnode</title>
<style>
  body { font: 14px system-ui, sans-serif; margin: 1.5em; color: #222; }
  h1 { font-size: 1.3em; } h2 { font-size: 1.05em; margin-top: 1.5em; }
  table { border-collapse: collapse; }
  td, th { padding: .25em .8em; border-bottom: 1px solid #ddd; text-align: left; }
  tr.leader { background: #e6f4ea; font-weight: 600; } tr.dead { color: #999; }
  #error { color: #b00020; } progress { width: 14em; }
</style>
</head>
<body>
<h1>distnode <span id="who"></span></h1>
<p>leader <b id="leader">?</b>, term <b id="term">?</b>
<span id="updated"></span> <span id="error"></span></p>
<h2>Nodes</h2>
<table id="nodes"><thead><tr><th>id</th><th>address</th><th>role</th><th>term</th><th>alive</th>
<th>last heard</th><th>problem</th></tr></thead><tbody></tbody></table>
<h2>Running jobs</h2>
<table id="running"><thead><tr><th>job</th><th>op</th><th>source</th><th>progress</th>
<th>shards</th><th>by node</th></tr></thead>
<tbody></tbody></table>
<h2>Recent jobs</h2>
<table id="recent"><thead><tr><th>job</th><th>op</th><th>source</th><th>state</th><th>ms</th></tr></thead>
<tbody></tbody></table>
<script>
"use strict";
function cell(row, text) { const td = row.insertCell(); td.textContent = text; return td; }
function fill(id, items, draw) {
  const body = document.querySelector("#" + id + " tbody");
  body.replaceChildren();
  for (const item of items) { draw(body.insertRow(), item); }
}
function render(s) {
  document.getElementById("who").textContent = "as " + s.answered_by + " sees it";
  document.getElementById("leader").textContent = s.leader || "(none)";
  document.getElementById("term").textContent = s.term;
  fill("nodes", s.nodes, (row, n) => {
    row.dataset.id = n.id || n.address;
    if (n.role === "leader") row.className = "leader"; else if (!n.alive) row.className = "dead";
    cell(row, n.id || "?"); cell(row, n.address); cell(row, n.role); cell(row, n.term);
    cell(row, n.alive ? "yes" : "no");
    cell(row, n.last_heartbeat_ms === null ? "-" : Math.round(n.last_heartbeat_ms) + " ms ago");
    cell(row, n.problem || n.storage_error || "");
  });
  fill("running", s.running, (row, j) => {
    row.dataset.job = j.job_id;
    cell(row, j.job_id); cell(row, j.op); cell(row, j.source);
    const bar = document.createElement("progress");
    bar.max = Math.max(j.shards, 1); bar.value = j.shards_done;
    cell(row, "").appendChild(bar);
    cell(row, j.shards_done + " / " + j.shards);
    const nodes = Object.entries(j.nodes || {});
    const held = nodes.map(([id, n]) => id + ": " + n).join(", ");
    cell(row, nodes.length ? held : "(the leader's page shows it)");
  });
  fill("recent", s.recent, (row, j) => {
    cell(row, j.job_id); cell(row, j.op); cell(row, j.source); cell(row, j.state);
    cell(row, j.elapsed_ms === null ? "" : j.elapsed_ms.toFixed(1));
  });
  document.getElementById("updated").textContent = "(updated " + new Date().toLocaleTimeString() + ")";
}
async function poll() {
  try {
    const reply = await fetch("/status.json", {cache: "no-store"});
    render(await reply.json());
    document.getElementById("error").textContent = "";
  } catch (e) {
    document.getElementById("error").textContent = "this node does not answer: " + e;
  }
  setTimeout(poll, 500);
}
poll();
</script>
</body>
</html>
"""
