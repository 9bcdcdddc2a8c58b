// Jobs: the list with live progress (server-sent events read through fetch), a submit
// form, a dataset upload, cancel.
import { api, streamEvents } from "../api.js";
import { errorText, fmt, h, message, shortId, statusBadge, when } from "../dom.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);

function progressCell(job) {
  const p = job.progress || {};
  const frac = job.status === "succeeded" ? 1 : p.fraction || 0;
  const detail = p.epochs ? `${p.phase ? `${p.phase} ` : ""}epoch ${p.epoch}/${p.epochs}` : "";
  return h("span", {}, h("progress", { max: 1, value: frac }), " ", h("span.muted", {}, `${(100 * frac).toFixed(0)} % ${detail}`));
}

function headText(spec) {
  const head = spec?.head || {};
  if (head.kind !== "het") return head.kind || "–";
  return `het R=${head.num_factors ?? "–"} τ=${head.temperature ?? "–"}`;
}

function jobRow(job, onCancel) {
  const tr = h("tr", { dataset: { job: job.id } });
  const fill = (j) => {
    tr.replaceChildren(
      h("td", {}, h("a.mono", { href: `#/jobs/${j.id}` }, shortId(j.id))),
      h("td", {}, statusBadge(j.status)),
      h("td.job-progress", {}, progressCell(j)),
      h("td", {}, headText(j.spec)),
      h("td", {}, j.spec?.backbone?.kind || "–"),
      h("td.num", {}, j.metrics?.model?.test_accuracy !== undefined ? fmt(j.metrics.model.test_accuracy) : "–"),
      h("td.num", {}, j.metrics?.baseline?.test_accuracy !== undefined ? fmt(j.metrics.baseline.test_accuracy) : "–"),
      h("td.muted", {}, when(j.created_at)),
      h("td", {}, TERMINAL.has(j.status)
        ? (j.model_id ? h("a", { href: `#/predict/${j.model_id}` }, "predict") : "")
        : h("button.secondary", { type: "button", onclick: () => onCancel(j) }, "Cancel")),
    );
  };
  fill(job);
  return { tr, fill };
}

// Follow a job's event stream, calling update(job-like) on each event, until it ends.
export function follow(job, update, signal) {
  let state = { ...job };
  return streamEvents(`/v1/jobs/${job.id}/events`, (name, data) => {
    if (typeof data !== "object") return;
    state = name === "end" ? data : { ...state, ...data };
    update(state, name);
  }, signal).catch((err) => { if (!signal.aborted) console.warn("event stream", job.id, errorText(err)); });
}

function submitForm(datasets, onSubmitted) {
  const out = h("span.muted");
  const form = h("form.inline", {},
    h("label", {}, "dataset", h("select", { name: "dataset_id", required: true },
      datasets.map((d) => h("option", { value: d.id }, `${d.name} (${d.num_train} rows, ${d.num_classes} classes${d.lineage ? ", corrected" : ""})`)))),
    h("label", {}, "head", h("select", { name: "head" }, h("option", { value: "het" }, "het"), h("option", { value: "softmax" }, "softmax"))),
    h("label", {}, "factors R", h("input", { name: "num_factors", type: "number", min: 0, value: 4, style: "width:5rem" })),
    h("label", {}, "τ", h("input", { name: "temperature", value: "auto", style: "width:6rem", title: "a number, auto or learned" })),
    h("label", {}, "backbone", h("select", { name: "backbone" }, ["mlp", "cnn", "resnet18"].map((b) => h("option", { value: b }, b)))),
    h("label", {}, "epochs", h("input", { name: "epochs", type: "number", min: 1, value: 10, style: "width:5rem" })),
    h("label", { style: "flex-direction:row;align-items:center" }, h("input", { name: "compare_baseline", type: "checkbox", checked: true }), "compare baseline"),
    h("button", { type: "submit" }, "Train"),
    out,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const tau = String(f.get("temperature")).trim();
    const spec = {
      dataset_id: f.get("dataset_id"),
      head: { kind: f.get("head") },
      backbone: { kind: f.get("backbone") },
      train: { epochs: Number(f.get("epochs")) },
      compare_baseline: f.get("compare_baseline") === "on",
    };
    if (spec.head.kind === "het") {
      spec.head.num_factors = Number(f.get("num_factors"));
      spec.head.temperature = tau === "auto" || tau === "learned" ? tau : Number(tau);
    }
    out.className = "muted";
    out.textContent = "submitting…";
    try {
      const job = await api("/v1/jobs", { method: "POST", body: spec });
      out.textContent = `job ${shortId(job.id)} queued`;
      onSubmitted(job);
    } catch (err) {
      out.className = "error";
      out.textContent = errorText(err);
    }
  });
  return form;
}

function uploadForm(onUploaded) {
  const out = h("span.muted");
  const form = h("form.inline", {},
    h("label", {}, "dataset file (.npz, .csv, .zip)", h("input", { name: "file", type: "file", accept: ".npz,.csv,.zip", required: true })),
    h("button.secondary", { type: "submit" }, "Upload"),
    out,
  );
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    out.className = "muted";
    out.textContent = "uploading…";
    try {
      const d = await api("/v1/datasets", { method: "POST", body: new FormData(form) });
      out.textContent = `uploaded ${d.name}: ${d.num_train} train rows, ${d.num_classes} classes`;
      onUploaded(d);
    } catch (err) {
      out.className = "error";
      out.textContent = errorText(err);
    }
  });
  return form;
}

export async function jobsPage(view, _params, signal) {
  const [jobs, datasets] = await Promise.all([
    api("/v1/jobs?limit=50", { signal }),
    api("/v1/datasets", { signal }),
  ]);
  const tbody = h("tbody");
  const rows = new Map();
  const notice = h("p.error", { hidden: true });

  const cancel = async (job) => {
    try {
      const j = await api(`/v1/jobs/${job.id}/cancel`, { method: "POST" });
      rows.get(job.id)?.fill(j);
    } catch (err) {
      notice.hidden = false;
      notice.textContent = `cancel ${shortId(job.id)}: ${errorText(err)}`;
    }
  };
  const empty = h("tr", {}, h("td", { colSpan: 9 }, message("No jobs yet.")));
  const add = (job, prepend = false) => {
    empty.remove();
    const row = jobRow(job, cancel);
    rows.set(job.id, row);
    if (prepend) tbody.prepend(row.tr); else tbody.append(row.tr);
    if (!TERMINAL.has(job.status)) follow(job, (j) => row.fill(j), signal);
  };
  tbody.append(empty);
  jobs.forEach((j) => add(j));

  const table = h("table.jobs", {},
    h("thead", {}, h("tr", {}, ["job", "status", "progress", "head", "backbone"].map((t) => h("th", {}, t)),
      h("th.num", {}, "HET acc."), h("th.num", {}, "baseline acc."), h("th", {}, "created"), h("th", {}, ""))),
    tbody);
  const datasetSelectHolder = h("div");
  const renderSubmit = (ds) => datasetSelectHolder.replaceChildren(
    ds.length ? submitForm(ds, (job) => add(job, true)) : message("Upload a dataset first."));
  renderSubmit(datasets);

  view.replaceChildren(
    h("h1", {}, "Jobs"),
    h("section.card", {}, h("h2", {}, "Train"), datasetSelectHolder,
      h("details", {}, h("summary.muted", {}, "upload a dataset"), uploadForm((d) => { datasets.unshift(d); renderSubmit(datasets); }))),
    h("section.card", {}, h("h2", {}, "Recent jobs"), notice, table),
  );
}
