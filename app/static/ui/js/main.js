// The dashboard's shell: asks for the API key once per tab, then routes on the hash.
//   #/jobs            jobs, live progress, submit, cancel
//   #/jobs/<id>       one job and its model: curves, metrics, noise report, label issues
//   #/models          models and aliases          #/models/<id>   a model's job page
//   #/predict[/<ref>] the predict playground
import { api, forgetKey, getKey, setKey, whenUnauthorized } from "./api.js";
import { errorText, message } from "./dom.js";
import { jobsPage } from "./pages/jobs.js";
import { jobPage, modelPage } from "./pages/job.js";
import { modelsPage } from "./pages/models.js";
import { predictPage } from "./pages/predict.js";

const view = document.getElementById("view");
const dialog = document.getElementById("keydialog");
const keyInput = document.getElementById("keyinput");
const keyError = document.getElementById("keyerror");
const signout = document.getElementById("signout");

const ROUTES = [
  [/^#\/jobs\/([\w-]+)$/, "jobs", jobPage],
  [/^#\/jobs\/?$/, "jobs", jobsPage],
  [/^#\/models\/([\w.-]+)$/, "models", modelPage],
  [/^#\/models\/?$/, "models", modelsPage],
  [/^#\/predict(?:\/([\w.-]+))?$/, "predict", predictPage],
];

let current = null; // AbortController of the page on screen (its streams and fetches)

async function render() {
  if (!getKey()) return askKey();
  const hash = location.hash || "#/jobs";
  const match = ROUTES.map(([re, nav, page]) => [hash.match(re), nav, page]).find(([m]) => m);
  current?.abort();
  current = new AbortController();
  const signal = current.signal;
  document.querySelectorAll("header nav a[data-nav]").forEach((a) => {
    a.classList.toggle("active", match && a.dataset.nav === match[1]);
  });
  view.dataset.state = "loading";
  view.replaceChildren(message("Loading…"));
  if (!match) {
    view.replaceChildren(message(`No page ${hash}.`, "error"));
    view.dataset.state = "ready";
    return;
  }
  const [m, nav, page] = match;
  document.body.dataset.page = nav;
  try {
    await page(view, m.slice(1).map((p) => p && decodeURIComponent(p)), signal);
  } catch (err) {
    if (signal.aborted) return;
    if (err.status !== 401) view.replaceChildren(message(errorText(err), "error"));
  }
  if (!signal.aborted) view.dataset.state = "ready";
}

function askKey(reason) {
  keyError.hidden = !reason;
  keyError.textContent = reason || "";
  signout.hidden = true;
  view.replaceChildren(message("Enter the API key to continue."));
  view.dataset.state = "key";
  if (!dialog.open) dialog.showModal();
  keyInput.focus();
}

document.getElementById("keyform").addEventListener("submit", async (event) => {
  event.preventDefault();
  setKey(keyInput.value.trim());
  try {
    await api("/v1/aliases");
  } catch (err) {
    forgetKey();
    keyError.hidden = false;
    keyError.textContent = err.status === 401 ? "That key was refused." : errorText(err);
    return;
  }
  keyInput.value = "";
  dialog.close();
  signout.hidden = false;
  render();
});

dialog.addEventListener("cancel", (event) => event.preventDefault()); // no way around it

signout.addEventListener("click", () => {
  forgetKey();
  current?.abort();
  askKey();
});

whenUnauthorized((detail) => {
  forgetKey();
  current?.abort();
  askKey(`The server refused the key (${detail}).`);
});

window.addEventListener("hashchange", render);
signout.hidden = !getKey();
if (!location.hash) history.replaceState(null, "", "#/jobs");
render();
