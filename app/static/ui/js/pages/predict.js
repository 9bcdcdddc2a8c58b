// The predict playground: a row as JSON or numbers, or an image; probabilities with MC
// error bars, the entropy split, noise std and correlated class pairs; marginal (MC) or
// noise-free predictive.
import { api } from "../api.js";
import { entropySplit, probabilityBars } from "../charts.js";
import { errorText, fmt, h, message, shortId } from "../dom.js";

// Rows from text: JSON (one row, a list of rows, or {"inputs": rows}) or numbers separated
// by spaces or commas, one row per line. `ndim`: the dimensions of one row.
export function parseRows(text, ndim = 1) {
  const t = text.trim();
  if (!t) throw new Error("enter a row");
  if (t.startsWith("[") || t.startsWith("{")) {
    let v = JSON.parse(t);
    if (v && !Array.isArray(v) && Array.isArray(v.inputs)) v = v.inputs;
    if (!Array.isArray(v)) throw new Error("expected a JSON array");
    let depth = 0;
    for (let x = v; Array.isArray(x); x = x[0]) depth += 1;
    return depth > ndim ? v : [v];
  }
  return t.split(/\n+/).filter((l) => l.trim()).map((line) =>
    line.trim().split(/[\s,;]+/).map((x) => {
      const n = Number(x);
      if (!Number.isFinite(n)) throw new Error(`not a number: ${x}`);
      return n;
    }));
}

const readAsBase64 = (file) => new Promise((resolve, reject) => {
  const r = new FileReader();
  r.onload = () => resolve(String(r.result).split(",", 2)[1]);
  r.onerror = () => reject(r.error);
  r.readAsDataURL(file);
});

function predictionCard(pred, i, names, predictive, mcSamples) {
  const K = pred.probs.length;
  const sampled = predictive !== "noise_free" && pred.mc_stderr;
  const parts = [
    h("h2", {}, `row ${i}: `, h("strong", {}, pred.class_name ?? pred.label), ` · confidence ${fmt(pred.confidence)}`,
      h("span.muted", {}, predictive === "noise_free" ? " · noise-free predictive (no sampling)" : ` · MC predictive, S = ${mcSamples}`)),
    probabilityBars(pred, names),
  ];
  if (typeof pred.entropy === "number" && typeof pred.expected_entropy === "number") {
    parts.push(entropySplit(pred.entropy, pred.expected_entropy, K));
  } else if (typeof pred.entropy === "number") {
    parts.push(h("p", {}, `entropy ${fmt(pred.entropy)}`));
  } else if (Array.isArray(pred.entropy)) {
    parts.push(h("p", {}, "per-label entropy: ", pred.entropy.map((e, k) => h("span.pill", {}, `${names[k] ?? k} ${fmt(e, 3)}`))));
  }
  parts.push(h("p.legend-note", {}, "All of it is label noise (aleatoric): the HET head does not estimate what the model does not know.",
    sampled ? "" : " Sampled-only fields are not computed for this predictive."));
  if (pred.correlated_pairs?.length) {
    parts.push(h("table.pairs", {},
      h("thead", {}, h("tr", {}, h("th", {}, "correlated pair"), h("th.num", {}, "ρ"))),
      h("tbody", {}, pred.correlated_pairs.map((p) => h("tr", {},
        h("td", {}, p.classes.map((c) => names[c] ?? c).join(" ↔ ")), h("td.num", {}, fmt(p.correlation, 3)))))),
    h("p.legend-note", {}, "Latent (logit) correlation among the most probable classes; a negative ρ makes the two swap more often."));
  }
  return h("section.card.prediction", {}, parts);
}

export async function predictPage(view, [ref], signal) {
  const [models, aliases] = await Promise.all([
    api("/v1/models?limit=200", { signal }),
    api("/v1/aliases", { signal }),
  ]);
  if (!models.length) {
    view.replaceChildren(h("h1", {}, "Predict"), message("No models yet: train one on the Jobs page."));
    return;
  }
  const byId = new Map(models.map((m) => [m.id, m]));
  const aliasTarget = new Map(aliases.map((a) => [a.name, a.model_id]));
  const select = h("select", { name: "model" },
    aliases.length ? h("optgroup", { label: "aliases" }, aliases.map((a) => h("option", { value: a.name }, `${a.name} → ${shortId(a.model_id)}`))) : null,
    h("optgroup", { label: "models" }, models.map((m) => h("option", { value: m.id }, `${shortId(m.id)} ${m.role} ${m.head} ${JSON.stringify(m.input_shape)}`))));
  if (ref && (byId.has(ref) || aliasTarget.has(ref))) select.value = ref;
  const modelOf = () => byId.get(aliasTarget.get(select.value) || select.value);

  const textarea = h("textarea", { name: "rows", spellcheck: false });
  const hint = h("p.legend-note");
  let image = null;
  const dropLabel = h("span", {}, "drop an image here (image models), or click to choose");
  const fileInput = h("input", { type: "file", accept: "image/png,image/jpeg", hidden: true });
  const drop = h("div.dropzone", { onclick: () => fileInput.click() }, dropLabel, fileInput);
  const setImage = async (file) => {
    if (!file) return;
    image = await readAsBase64(file);
    dropLabel.textContent = `${file.name} (${(file.size / 1024).toFixed(0)} KiB): will be sent as the input`;
  };
  fileInput.addEventListener("change", () => setImage(fileInput.files[0]));
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); drop.classList.remove("over"); setImage(e.dataTransfer.files[0]); });

  const onModel = () => {
    const m = modelOf();
    if (!m) return;
    const isImage = m.input_shape.length === 3;
    drop.hidden = !isImage;
    const n = m.input_shape.reduce((a, b) => a * b, 1);
    hint.textContent = `input shape ${JSON.stringify(m.input_shape)} (${n} numbers a row), ${m.num_classes} classes: ${m.class_names.slice(0, 12).join(", ")}${m.num_classes > 12 ? ", …" : ""}`;
    if (!textarea.value.trim() && !isImage && n <= 4096) textarea.value = JSON.stringify(Array(n).fill(0));
  };
  select.addEventListener("change", () => { textarea.value = ""; image = null; onModel(); });

  const results = h("div#results");
  const out = h("span.muted");
  const form = h("form", {},
    h("div.inline", {},
      h("label", {}, "model or alias", select),
      h("label", {}, "predictive", h("span.row-flex", {},
        h("label", {}, h("input", { type: "radio", name: "predictive", value: "marginal", checked: true }), " marginal (MC)"),
        h("label", {}, h("input", { type: "radio", name: "predictive", value: "noise_free" }), " noise-free"))),
      h("label", {}, "MC samples", h("input", { name: "mc_samples", type: "number", min: 1, placeholder: "model default", style: "width:8rem" })),
      h("label", {}, "seed", h("input", { name: "seed", type: "number", min: 0, value: 7, style: "width:6rem" }))),
    h("p", {}, "row(s): a JSON array (or array of rows), or numbers separated by spaces or commas, one row per line"),
    textarea, hint, drop,
    h("p", {}, h("button", { type: "submit" }, "Predict"), " ", out));

  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    const m = modelOf();
    const predictive = f.get("predictive");
    const body = { correlated_pairs: true };
    if (f.get("seed") !== "") body.seed = Number(f.get("seed"));
    if (f.get("mc_samples") !== "") body.mc_samples = Number(f.get("mc_samples"));
    if (predictive === "noise_free") body.predictive = "noise_free";
    try {
      if (image && m.input_shape.length === 3) body.images = [image];
      else body.inputs = parseRows(textarea.value, m.input_shape.length);
    } catch (err) {
      out.className = "error";
      out.textContent = `input: ${err.message}`;
      return;
    }
    out.className = "muted";
    out.textContent = "predicting…";
    try {
      const r = await api(`/v1/models/${encodeURIComponent(select.value)}/predict`, { method: "POST", body, signal });
      const names = (byId.get(r.model_id) || m).class_names;
      out.textContent = `answered by ${shortId(r.model_id)}`;
      results.replaceChildren(...r.predictions.map((p, i) => predictionCard(p, i, names, r.predictive || predictive, r.mc_samples)));
    } catch (err) {
      if (signal.aborted) return;
      out.className = "error";
      const text = errorText(err);
      out.textContent = predictive === "noise_free" && err.status === 422 && /predictive/.test(text)
        ? "This server does not offer the noise-free predictive yet."
        : text;
    }
  });

  view.replaceChildren(h("h1", {}, "Predict"), h("section.card", {}, form), results);
  onModel();
}
