/**
 * The dashboard: batches (live progress, rate, ETA, filter by state), one
 * batch (live counters from WatchBatch, per-model in flight against the
 * limit, failed requests and one request's attempts, cancel and retry), and
 * models (limits, editable by an admin; running and queued; holds; charts),
 * and model routes (admins). Views are the URL hash: #/, #/batch/ID,
 * #/models, #/routes.
 */
import { onNeedToken, setToken } from "./api.js";
import { batchView } from "./batch-view.js";
import { batchesView } from "./batches-view.js";
import { modelsView } from "./models-view.js";
import { routesView } from "./routes-view.js";
import "./style.css";

const tokenForm = document.getElementById("token-form") as HTMLFormElement;
const tokenInput = document.getElementById("token") as HTMLInputElement;

onNeedToken(() => {
  tokenForm.hidden = false;
  tokenInput.focus();
});
tokenForm.addEventListener("submit", (e) => {
  e.preventDefault();
  setToken(tokenInput.value.trim());
  tokenInput.value = "";
  tokenForm.hidden = true;
  route();
});

let stopView: () => void = () => undefined;

function route(): void {
  stopView();
  const hash = window.location.hash;
  for (const a of document.querySelectorAll("[data-nav]")) a.classList.remove("active");
  const batch = /^#\/batch\/([0-9a-f-]+)$/.exec(hash);
  if (batch) stopView = batchView(batch[1]!);
  else if (hash === "#/models") {
    document.querySelector('[data-nav="models"]')?.classList.add("active");
    stopView = modelsView();
  } else if (hash === "#/routes") {
    document.querySelector('[data-nav="routes"]')?.classList.add("active");
    stopView = routesView();
  } else {
    document.querySelector('[data-nav="batches"]')?.classList.add("active");
    stopView = batchesView();
  }
}
window.addEventListener("hashchange", route);

route();
