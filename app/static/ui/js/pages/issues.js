// The label issues of a model, to look at and act on: every flagged training row, a page
// at a time, most suspect first, each with its image (image data: GET
// /v1/datasets/{id}/items/{index}, fetched with the key and shown through a blob URL),
// its given and suggested class names and score; a class-pair filter (the noise
// heatmap's cells call showPair); CSV export; a corrected dataset from the findings or an
// uploaded CSV, with its lineage, and a job on it with this job's spec.
import { api, download } from "../api.js";
import { errorText, fmt, h, message, shortId } from "../dom.js";

export const PAGE_SIZE = 12;

export function lineageText(lineage) {
  if (!lineage) return "";
  const parent = `corrected from dataset ${shortId(lineage.parent_dataset_id)}`;
  const changed = `${lineage.num_relabelled} relabelled, ${lineage.num_dropped} dropped`;
  if (lineage.rule === "csv") return `${parent} by a corrections CSV (sha256 ${lineage.csv_sha256.slice(0, 12)}…; ${changed})`;
  const top = lineage.top === null || lineage.top === undefined ? "every flagged row" : `top ${lineage.top} flagged`;
  return `${parent}: ${lineage.rule} ${top} of model ${shortId(lineage.model_id)} (${changed})`;
}

// { card, showPair(given, suggested) } for the model of `job` (null: none registered).
export function labelIssues(modelId, job, dataset, classNames, signal) {
  const card = h("section.card#label-issues", {}, h("h2", {}, "Label issues"));
  if (!modelId) {
    card.append(message("No model registered."));
    return { card, showPair: () => {} };
  }
  const images = (dataset?.input_shape || []).length === 3;
  const name = (c, given) => given ?? (c === null || c === undefined ? "–" : `${classNames?.[c] ?? c}`);
  const state = { offset: 0, pair: null };
  let urls = [];
  const summary = h("p.muted", {}, "Loading…");
  const filter = h("span.filter");
  const pager = h("span.pager.muted");
  const prev = h("button.secondary", { type: "button", disabled: true, onclick: () => move(-1) }, "Previous");
  const next = h("button.secondary", { type: "button", disabled: true, onclick: () => move(+1) }, "Next");
  const tbody = h("tbody");
  const table = h("table.issues", {},
    h("thead", {}, h("tr", {}, images ? h("th", {}, "image") : null, h("th.num", {}, "row"),
      h("th", {}, "given label"), h("th", {}, "suggested label"), h("th.num", {}, "score"))),
    tbody);

  function thumbnail(index) {
    const img = h("img.thumb", { alt: `training row ${index}` });
    const cell = h("td.thumb", {}, img);
    api(`/v1/datasets/${job.dataset_id}/items/${index}?format=png`, { raw: true, signal })
      .then((res) => res.blob())
      .then((blob) => {
        const url = URL.createObjectURL(blob);
        urls.push(url);
        img.src = url;
      })
      .catch((err) => {
        if (signal.aborted) return;
        cell.replaceChildren(h("span.error", { title: errorText(err) }, err.status === 409 ? "file changed" : "unavailable"));
      });
    return cell;
  }

  async function load() {
    const params = new URLSearchParams({ limit: PAGE_SIZE, offset: state.offset, flagged: "true" });
    if (state.pair) {
      params.set("given", state.pair.given);
      params.set("suggested", state.pair.suggested);
    }
    let r;
    try {
      r = await api(`/v1/models/${modelId}/label-issues?${params}`, { signal });
    } catch (err) {
      if (signal.aborted) return;
      summary.textContent = `No label issues for this model (${err.status || ""} ${errorText(err)}).`;
      table.hidden = true;
      return;
    }
    urls.forEach((u) => URL.revokeObjectURL(u));
    urls = [];
    const total = r.num_matching ?? r.num_flagged;
    summary.textContent = `${r.num_flagged} of ${r.num_examples} training rows flagged as likely mislabeled, most likely first (row = ${images ? "the training image's index in the dataset, as the CSV export names it" : "row of the uploaded x_train"}).`;
    filter.replaceChildren(state.pair
      ? h("span.pill", {}, `given ${name(state.pair.given)}, suggested ${name(state.pair.suggested)}: ${total} rows `,
        h("button.link", { type: "button", title: "show every flagged row", onclick: () => showPair(null) }, "×"))
      : "");
    const last = Math.min(state.offset + r.issues.length, total);
    pager.textContent = total ? `rows ${state.offset + 1}–${last} of ${total}` : "no flagged rows";
    prev.disabled = state.offset === 0;
    next.disabled = state.offset + PAGE_SIZE >= total;
    tbody.replaceChildren(...r.issues.map((i) => h("tr", { dataset: { index: i.index } },
      images ? thumbnail(i.index) : null,
      h("td.num", {}, i.index),
      h("td.given", {}, name(i.given_label, i.given_name)),
      h("td.suggested", {}, name(i.suggested_label, i.suggested_name)),
      h("td.num", {}, fmt(i.score, 4)))));
    table.hidden = false;
  }

  function move(step) {
    state.offset = Math.max(0, state.offset + step * PAGE_SIZE);
    load();
  }

  function showPair(given, suggested) {
    state.pair = given === null ? null : { given, suggested };
    state.offset = 0;
    load();
    if (given !== null) card.scrollIntoView({ block: "start" });
  }

  card.append(summary, h("div.row-flex", {}, prev, next, pager, filter), table,
    h("p.legend-note", {}, "Click a cell of the noise report's heatmap to list the rows the model thinks were flipped between those two classes."),
    fixPanel(modelId, job, signal));
  load();
  return { card, showPair };
}

function fixPanel(modelId, job, signal) {
  const out = h("div.fix-result");
  const done = (d) => {
    const train = h("button", {
      type: "button",
      onclick: async () => {
        try {
          const spec = { ...job.spec, dataset_id: d.id };
          const j = await api("/v1/jobs", { method: "POST", body: spec });
          location.hash = `#/jobs/${j.id}`;
        } catch (err) {
          out.append(h("p.error", {}, errorText(err)));
        }
      },
    }, "Train on it with this job's spec");
    out.replaceChildren(h("p", {}, `Dataset ${d.name} (`, h("span.mono", {}, shortId(d.id)),
      `, ${d.num_train} training rows): ${lineageText(d.lineage)}.`), train);
  };
  const failed = (err) => out.replaceChildren(h("p.error", {}, errorText(err)));
  const fromModel = h("form.inline#fix-from-model", {},
    h("label", {}, "action", h("select", { name: "action" },
      h("option", { value: "relabel" }, "relabel to the suggestion"), h("option", { value: "drop" }, "drop"))),
    h("label", {}, "top N flagged", h("input", { name: "top", type: "number", min: 1, placeholder: "all", style: "width:6rem" })),
    h("label", {}, "name", h("input", { name: "name", placeholder: "default: from the rule" })),
    h("button", { type: "submit" }, "Make a corrected dataset"));
  fromModel.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(fromModel);
    const body = { model_id: modelId, action: f.get("action") };
    if (f.get("top")) body.top = Number(f.get("top"));
    if (f.get("name")) body.name = f.get("name");
    out.replaceChildren(message("creating…"));
    try {
      done(await api(`/v1/datasets/${job.dataset_id}/corrections/from-model`, { method: "POST", body, signal }));
    } catch (err) { failed(err); }
  });
  const fromCsv = h("form.inline#fix-from-csv", {},
    h("label", {}, "corrections CSV (index,label)", h("input", { name: "file", type: "file", accept: ".csv,text/csv", required: true })),
    h("button.secondary", { type: "submit" }, "Upload corrections"));
  fromCsv.addEventListener("submit", async (event) => {
    event.preventDefault();
    out.replaceChildren(message("uploading…"));
    try {
      done(await api(`/v1/datasets/${job.dataset_id}/corrections`, { method: "POST", body: new FormData(fromCsv), signal }));
    } catch (err) { failed(err); }
  });
  const exportCsv = h("button.secondary", {
    type: "button",
    onclick: async () => {
      try {
        await download(`/v1/models/${modelId}/label-issues?format=csv&flagged=true`, `label-issues-${modelId}.csv`, signal);
      } catch (err) { failed(err); }
    },
  }, "Export flagged rows as CSV");
  return h("details.fix", {}, h("summary", {}, "Export and fix"),
    h("p.legend-note", {}, "A corrected dataset refers to the same files (nothing is copied) and records where it came from. Edit the exported CSV's given column and upload index,label lines back, or apply the model's suggestions directly."),
    h("div.row-flex", {}, exportCsv), fromModel, fromCsv, out);
}
