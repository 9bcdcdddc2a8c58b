// One job and the model it registered: live progress, training curves of model and
// baseline, test metrics of both HET predictives beside the baseline, reliability
// diagrams, the noise report, label issues (pages/issues.js), ONNX download and aliases.
import { api, download } from "../api.js";
import { heatmap, reliabilityBins, reliabilityDiagram, trainingCurves } from "../charts.js";
import { errorText, fmt, h, message, shortId, statusBadge, when } from "../dom.js";
import { labelIssues, lineageText } from "./issues.js";
import { follow } from "./jobs.js";

const TERMINAL = new Set(["succeeded", "failed", "cancelled"]);
const METRICS = [
  ["accuracy", "accuracy", +1],
  ["nll", "NLL", -1],
  ["ece", "ECE", -1],
  ["brier", "Brier", -1],
];

export async function jobPage(view, [jobId], signal) {
  const job = await api(`/v1/jobs/${jobId}`, { signal });
  const model = job.model_id ? await api(`/v1/models/${job.model_id}`, { signal }) : null;
  await renderJob(view, job, model, signal);
}

export async function modelPage(view, [ref], signal) {
  const model = await api(`/v1/models/${encodeURIComponent(ref)}`, { signal });
  const job = await api(`/v1/jobs/${model.job_id}`, { signal });
  await renderJob(view, job, model, signal);
}

function metricsTable(job, model) {
  const het = job.metrics?.model || (model?.role === "model" ? model.metrics : null) || {};
  const base = job.metrics?.baseline || model?.baseline_metrics || null;
  const hetName = het.head === "softmax" || job.spec?.head?.kind === "softmax" ? "model" : "HET";
  const columns = [[`${hetName} · MC predictive`, (k) => het[`test_${k}`]]];
  if (Object.keys(het).some((k) => k.startsWith("noise_free_test_"))) {
    columns.push([`${hetName} · noise-free`, (k) => het[`noise_free_test_${k}`]]);
  }
  if (base) columns.push(["softmax baseline", (k) => base[`test_${k}`]]);
  const rows = METRICS.map(([key, label, better]) => {
    const values = columns.map(([, get]) => get(key));
    const finite = values.filter((v) => typeof v === "number");
    const best = finite.length > 1 ? (better > 0 ? Math.max(...finite) : Math.min(...finite)) : null;
    return h("tr", {}, h("td", {}, label),
      values.map((v) => h(`td.num${v === best ? ".best" : ""}`, {}, fmt(v, 4))));
  });
  return h("table.metrics", {},
    h("thead", {}, h("tr", {}, h("th", {}, "test"), columns.map(([name]) => h("th.num", {}, name)))),
    h("tbody", {}, rows));
}

function reliabilitySection(job, model) {
  const sources = [
    ["model", job.metrics?.model || model?.metrics],
    ["baseline", job.metrics?.baseline || model?.baseline_metrics],
  ];
  const figures = [];
  for (const [who, metrics] of sources) {
    if (!metrics) continue;
    // metrics.reliability = {marginal: bins, noise_free: bins} (one diagram per
    // predictive), or a single bins record.
    const rel = metrics.reliability;
    if (!rel) continue;
    const named = rel.bin_edges || Array.isArray(rel) ? { marginal: rel } : rel;
    const titles = { marginal: "MC predictive", noise_free: "noise-free" };
    for (const [predictive, value] of Object.entries(named)) {
      const bins = reliabilityBins(value);
      if (!bins?.length) continue;
      const title = who === "baseline" ? "softmax baseline" : `HET · ${titles[predictive] || predictive}`;
      if (who === "baseline" && predictive !== "marginal") continue; // identical for a softmax
      figures.push(reliabilityDiagram(bins, title));
    }
  }
  return h("section.card#reliability", {}, h("h2", {}, "Reliability"),
    figures.length ? h("div.row-flex", {}, figures) : message("Reliability bins not recorded for this model."));
}

async function noiseSection(modelId, classNames, signal, onCell) {
  const card = h("section.card#noise", {}, h("h2", {}, "Noise report"), message("Loading…"));
  if (!modelId) { card.lastChild.replaceWith(message("No model registered.")); return card; }
  try {
    const report = await api(`/v1/models/${modelId}/noise`, { signal });
    const names = classNames || [];
    const pairs = (report.class_pairs || []).slice(0, 10);
    const parts = [
      h("p.muted", {}, `Over ${report.num_examples} training inputs. Flip rate: how often a draw moves the argmax from the first class to the second; a negative correlation makes the pair swap more often.`),
    ];
    const row = h("div.row-flex");
    if (report.flip_matrix) {
      row.append(h("figure", {}, heatmap(report.flip_matrix, names, onCell), h("figcaption.legend-note", {}, "flip matrix: row = argmax of the mean logits, column = argmax of a draw (diagonal greyed); click a cell for its flagged rows")));
    } else {
      row.append(message("No flip matrix (too many classes); the pairs are listed."));
    }
    row.append(h("table.pairs", {},
      h("thead", {}, h("tr", {}, h("th", {}, "class pair"), h("th.num", {}, "flip rate"), h("th.num", {}, "correlation"))),
      h("tbody", {}, pairs.map((p) => h("tr", {},
        h("td", {}, (p.class_names || p.classes.map((c) => names[c] ?? c)).join(" ↔ ")),
        h("td.num", {}, fmt(p.flip_rate, 4)), h("td.num", {}, fmt(p.correlation, 3)))))));
    parts.push(row);
    if (report.noise_std_by_class) {
      parts.push(h("p.legend-note", {}, "noise std by class: ",
        report.noise_std_by_class.map((v, k) => h("span.pill", {}, `${names[k] ?? k} ${fmt(v, 3)}`))));
    }
    card.lastChild.replaceWith(h("div", {}, parts));
  } catch (err) {
    if (signal.aborted) throw err;
    card.lastChild.replaceWith(message(`No noise report for this model (${err.status || ""} ${errorText(err)}).`));
  }
  return card;
}

async function actionsSection(model, signal) {
  const card = h("section.card#model-actions", {}, h("h2", {}, "Model"));
  if (!model) { card.append(message("No model registered yet.")); return card; }
  const aliases = (await api("/v1/aliases", { signal })).filter((a) => a.model_id === model.id);
  const out = h("span.muted");
  const aliasList = h("span", {}, aliases.length ? aliases.map((a) => h("span.pill", {}, a.name)) : h("span.muted", {}, "none"));
  const form = h("form.inline", {},
    h("label", {}, "alias", h("input", { name: "alias", required: true, pattern: "[A-Za-z][A-Za-z0-9_.\\-]{0,63}", placeholder: "production" })),
    h("button", { type: "submit" }, "Point alias here"), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const name = new FormData(form).get("alias");
    try {
      await api(`/v1/aliases/${encodeURIComponent(name)}`, { method: "PUT", body: { model_id: model.id } });
      out.className = "muted";
      out.textContent = `${name} → ${shortId(model.id)}`;
      aliasList.querySelector(".muted")?.remove();
      aliasList.append(h("span.pill", {}, name));
    } catch (err) {
      out.className = "error";
      out.textContent = errorText(err);
    }
  });
  const dl = h("button.secondary", {
    type: "button",
    onclick: async () => {
      try {
        const size = await download(`/v1/models/${model.id}/onnx`, `${model.id}.onnx`);
        out.className = "muted";
        out.textContent = `downloaded ${(size / 1024).toFixed(0)} KiB`;
      } catch (err) {
        out.className = "error";
        out.textContent = errorText(err);
      }
    },
  }, "Download ONNX");
  card.append(
    h("p", {}, h("span.mono", {}, model.id), " · ", model.role, " · ", model.head, " · ", model.task,
      ` · input ${JSON.stringify(model.input_shape)} · ${model.num_classes} classes · registered ${when(model.created_at)}`),
    h("p", {}, "aliases: ", aliasList),
    h("div.row-flex", {}, dl, h("a", { href: `#/predict/${model.id}` }, "open in the predict playground")),
    form);
  return card;
}

async function renderJob(view, job, model, signal) {
  const spec = job.spec || {};
  const progress = h("span.job-progress");
  const setProgress = (j) => {
    const p = j.progress || {};
    progress.replaceChildren(statusBadge(j.status), " ",
      h("progress", { max: 1, value: j.status === "succeeded" ? 1 : p.fraction || 0 }), " ",
      h("span.muted", {}, p.epochs ? `${p.phase || ""} epoch ${p.epoch}/${p.epochs}` : ""));
  };
  setProgress(job);
  const chart = h("div.chart#curves");
  const history = job.history || [];
  const noEpochs = message("No epochs recorded yet.");
  noEpochs.hidden = history.length > 0;
  const modelId = model?.id || job.model_id;
  const classNames = model?.class_names;
  const dataset = await api(`/v1/datasets/${job.dataset_id}`, { signal }).catch((err) => {
    if (signal.aborted) throw err;
    return null;
  });
  view.replaceChildren(
    h("h1", {}, `Job ${shortId(job.id)}`, model && model.id !== job.model_id ? ` · ${model.role} ${shortId(model.id)}` : ""),
    h("section.card", {},
      h("p", {}, progress),
      h("p.muted", {}, `head ${spec.head?.kind} R=${spec.head?.num_factors ?? "–"} τ=${spec.head?.temperature ?? "–"} · backbone ${spec.backbone?.kind} · ${spec.train?.epochs} epochs · baseline ${spec.compare_baseline ? "yes" : "no"} · dataset `, h("span.mono", {}, shortId(job.dataset_id)), dataset ? ` ${dataset.name}` : "", ` · created ${when(job.created_at)}`),
      dataset?.lineage ? h("p.lineage", {}, lineageText(dataset.lineage)) : null,
      job.error ? h("p.error", {}, job.error) : null),
    h("section.card", {}, h("h2", {}, "Training curves"), noEpochs, chart,
      h("p.legend-note", {}, "dotted: train loss · solid: validation NLL (left axis) · dashed: validation accuracy (right axis)")),
    h("div.grid", {},
      h("section.card#metrics", {}, h("h2", {}, "Test metrics"),
        job.metrics || model ? metricsTable(job, model) : message("Not finished yet."),
        h("p.legend-note", {}, "MC predictive: models the noisy labels; noise-free: the same model with the learned label noise set to zero. Best per row in bold.")),
      reliabilitySection(job, model)),
  );
  if (history.length) trainingCurves(chart, history);
  if (!TERMINAL.has(job.status)) {
    // Live: progress on every event, the curves redrawn once per finished epoch, the
    // whole page again when the job ends.
    let drawn = `${job.progress?.phase}:${job.progress?.epoch}`;
    let busy = false;
    follow(job, async (j, name) => {
      setProgress(j);
      if (name === "end") {
        jobPage(view, [job.id], signal).catch(() => {});
        return;
      }
      const key = `${j.progress?.phase}:${j.progress?.epoch}`;
      if (key === drawn || busy) return;
      busy = true;
      try {
        const fresh = await api(`/v1/jobs/${job.id}`, { signal });
        if (fresh.history?.length) {
          noEpochs.hidden = true;
          trainingCurves(chart, fresh.history);
        }
        drawn = key;
      } catch { /* the next event tries again */ } finally {
        busy = false;
      }
    }, signal);
  }
  // The noise heatmap's cells filter the label-issue table by class pair: row i is the
  // class the model holds (suggested), column j the label a draw gives (given).
  const issues = labelIssues(modelId, job, dataset, classNames, signal);
  const sections = await Promise.all([
    actionsSection(model, signal),
    noiseSection(modelId, classNames, signal, (i, j) => issues.showPair(j, i)),
  ]);
  if (!signal.aborted) view.append(...sections, issues.card);
}
