// The search page: sends the chosen or dropped image to POST /search and shows the top-k
// thumbnails (GET /images/{id}) with their Hamming distance and class.
"use strict";

const statusBox = document.getElementById("status");
const queryBox = document.getElementById("query");
const resultsBox = document.getElementById("results");
const drop = document.getElementById("drop");

function setStatus(box, message, isError) {
  box.textContent = message;
  box.className = isError ? "error" : "";
}

async function search(file) {
  queryBox.replaceChildren();
  resultsBox.replaceChildren();
  const preview = document.createElement("img");
  preview.alt = "query";
  preview.src = URL.createObjectURL(file);
  queryBox.append(preview);
  const k = document.getElementById("k").value || "12";
  const form = new FormData();
  form.append("image", file);
  setStatus(statusBox, "searching…", false);
  let body;
  try {
    const response = await fetch("/search?k=" + encodeURIComponent(k), { method: "POST", body: form });
    body = await response.json();
    if (!response.ok) {
      setStatus(statusBox, body.error + ": " + body.detail, true);
      return;
    }
  } catch (err) {
    setStatus(statusBox, "request failed: " + err, true);
    return;
  }
  const query = body.queries[0];
  for (const hit of query.results) {
    const figure = document.createElement("figure");
    figure.className = "hit";
    figure.dataset.id = hit.id;
    figure.dataset.distance = hit.distance;
    const link = document.createElement("a");
    link.href = "/?query=/images/" + hit.id; // more like this
    link.title = "search with this image";
    const img = document.createElement("img");
    img.src = "/images/" + hit.id;
    img.alt = hit.path;
    img.loading = "lazy";
    link.append(img);
    const caption = document.createElement("figcaption");
    caption.className = "caption";
    caption.textContent = "#" + hit.rank + " · d=" + hit.distance + " · " + (hit.class_name ?? "label " + hit.label);
    figure.append(link, caption);
    resultsBox.append(figure);
  }
  const t = body.timings_ms;
  setStatus(
    statusBox,
    query.results.length + " results for code " + query.code + " in " + t.total.toFixed(1) + " ms (inference " +
      t.inference.toFixed(1) + " ms, batch of " + body.batch_images + ")",
    false,
  );
}

document.getElementById("file").addEventListener("change", (e) => {
  if (e.target.files.length > 0) search(e.target.files[0]);
});
drop.addEventListener("dragover", (e) => {
  e.preventDefault();
  drop.classList.add("over");
});
drop.addEventListener("dragleave", () => drop.classList.remove("over"));
drop.addEventListener("drop", (e) => {
  e.preventDefault();
  drop.classList.remove("over");
  if (e.dataTransfer.files.length > 0) search(e.dataTransfer.files[0]);
});

// `/?query=/images/{id}` searches with a thumbnail of an index item ("more like this" links).
// Only that same-origin route is fetched.
const queryParam = new URLSearchParams(location.search).get("query");
if (queryParam !== null && /^\/images\/[0-9]+$/.test(queryParam)) {
  fetch(queryParam)
    .then((response) => {
      if (!response.ok) throw new Error("HTTP " + response.status);
      return response.blob();
    })
    .then((blob) => search(new File([blob], "query.png", { type: blob.type })))
    .catch((err) => setStatus(statusBox, "cannot load " + queryParam + ": " + err, true));
}

// "Evaluate": POST /evaluate (or follow the job already running), poll it, then show its
// metrics table and plots.
const evalStatus = document.getElementById("eval-status");
const evalTable = document.getElementById("eval-table");
const evalPlots = document.getElementById("eval-plots");

function number(x) {
  return x === null || x === undefined ? "n/a" : x.toFixed(4);
}

function showReport(job) {
  const m = job.metrics;
  const rows = [];
  for (const e of m.map) rows.push(["mAP@all", number(e.map), "ties: " + e.ties]);
  for (const e of m.map_at_k) {
    rows.push(["mAP@" + e.k, number(e.ir), "denominator min(relevant, k)"]);
    rows.push(["mAP@" + e.k, number(e.found_in_top_k), "denominator relevant found in top k"]);
  }
  for (const e of m.precision_at_k) rows.push(["precision@" + e.k, number(e.precision), "ties: " + e.ties]);
  rows.push(["precision@r<=" + m.radius.radius, number(m.radius.precision), "recall " + number(m.radius.recall)]);
  evalTable.replaceChildren(
    ...rows.map((cells) => {
      const tr = document.createElement("tr");
      for (const text of cells) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
  evalPlots.replaceChildren(
    ...job.plots.map((url) => {
      const img = document.createElement("img");
      img.src = url;
      img.alt = url;
      return img;
    }),
  );
  const what = m.evaluated_queries + " queries against " + m.database_size + " items, " + m.bits + " bits";
  setStatus(evalStatus, what, false);
}

async function follow(statusUrl) {
  for (;;) {
    const job = await (await fetch(statusUrl)).json();
    if (job.status === "done") return showReport(job);
    if (job.status === "failed") return setStatus(evalStatus, "evaluation failed: " + job.error, true);
    const progress = "encoded " + job.progress.done + " of " + job.progress.total + " queries";
    setStatus(evalStatus, "job " + job.job + ": " + progress, false);
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
}

document.getElementById("evaluate").addEventListener("click", async () => {
  try {
    const response = await fetch("/evaluate", { method: "POST" });
    const body = await response.json();
    if (response.status === 202) return await follow(body.status_url);
    if (body.error === "evaluation_running") return await follow("/evaluate/" + encodeURIComponent(body.job));
    setStatus(evalStatus, body.error + ": " + body.detail, true);
  } catch (err) {
    setStatus(evalStatus, "request failed: " + err, true);
  }
});
