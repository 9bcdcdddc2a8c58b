// Models and aliases: every registered model with its test metrics at a glance, the
// aliases, and a form that creates or moves one.
import { api } from "../api.js";
import { errorText, fmt, h, message, shortId, when } from "../dom.js";

export async function modelsPage(view, _params, signal) {
  const [models, aliases] = await Promise.all([
    api("/v1/models?limit=200", { signal }),
    api("/v1/aliases", { signal }),
  ]);
  const aliasesOf = (id) => aliases.filter((a) => a.model_id === id).map((a) => h("span.pill", {}, a.name));
  const modelTable = h("table.models", {},
    h("thead", {}, h("tr", {},
      ["model", "role", "head", "task", "classes", "aliases"].map((t) => h("th", {}, t)),
      ["acc.", "NLL", "ECE", "noise-free NLL", "baseline NLL"].map((t) => h("th.num", {}, t)),
      h("th", {}, "registered"))),
    h("tbody", {}, models.map((m) => h("tr", { dataset: { model: m.id } },
      h("td", {}, h("a.mono", { href: `#/models/${m.id}` }, shortId(m.id))),
      h("td", {}, m.role), h("td", {}, m.head), h("td", {}, m.task), h("td", {}, m.num_classes),
      h("td", {}, aliasesOf(m.id)),
      h("td.num", {}, fmt(m.metrics?.test_accuracy)),
      h("td.num", {}, fmt(m.metrics?.test_nll)),
      h("td.num", {}, fmt(m.metrics?.test_ece)),
      h("td.num", {}, fmt(m.metrics?.noise_free_test_nll)),
      h("td.num", {}, fmt(m.baseline_metrics?.test_nll)),
      h("td.muted", {}, when(m.created_at))))));

  const out = h("span.muted");
  const form = h("form.inline#alias-form", {},
    h("label", {}, "alias", h("input", { name: "name", required: true, list: "alias-names", placeholder: "production" }),
      h("datalist#alias-names", {}, aliases.map((a) => h("option", { value: a.name })))),
    h("label", {}, "model", h("select", { name: "model_id" },
      models.map((m) => h("option", { value: m.id }, `${shortId(m.id)} ${m.role} ${m.head} acc ${fmt(m.metrics?.test_accuracy)}`)))),
    h("button", { type: "submit" }, "Set alias"), out);
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const f = new FormData(form);
    try {
      await api(`/v1/aliases/${encodeURIComponent(f.get("name"))}`, { method: "PUT", body: { model_id: f.get("model_id") } });
      await modelsPage(view, [], signal);
    } catch (err) {
      out.className = "error";
      out.textContent = errorText(err);
    }
  });
  const remove = async (name) => {
    try {
      await api(`/v1/aliases/${encodeURIComponent(name)}`, { method: "DELETE" });
      await modelsPage(view, [], signal);
    } catch (err) {
      out.className = "error";
      out.textContent = errorText(err);
    }
  };
  const aliasTable = h("table.aliases", {},
    h("thead", {}, h("tr", {}, ["alias", "model", "moved", ""].map((t) => h("th", {}, t)))),
    h("tbody", {}, aliases.map((a) => h("tr", {},
      h("td", {}, h("a", { href: `#/models/${encodeURIComponent(a.name)}` }, a.name)),
      h("td", {}, h("a.mono", { href: `#/models/${a.model_id}` }, shortId(a.model_id))),
      h("td.muted", {}, when(a.updated_at)),
      h("td", {}, h("button.secondary", { type: "button", onclick: () => remove(a.name) }, "Delete"))))));

  view.replaceChildren(
    h("h1", {}, "Models & aliases"),
    h("section.card", {}, h("h2", {}, "Models"), models.length ? modelTable : message("No models yet: train one on the Jobs page.")),
    h("section.card", {}, h("h2", {}, "Aliases"),
      aliases.length ? aliasTable : message("No aliases."),
      models.length ? form : null),
  );
}
