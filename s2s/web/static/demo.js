/**
 * The demo page (served at / when S2S_DEMO is on): a form over s2s-client.js.
 * Everything it shows comes from the server: the choices from GET /api/catalog,
 * the progress messages from the job's events, the errors as the server words them.
 */
import { createImageGeneration, describePlace } from "./s2s-client.js";

const $ = (id) => document.getElementById(id);
const form = $("generate-form");
const photo = $("photo");
const button = $("generate");

const CONNECTION = {
  idle: "",
  connecting: "Connecting for live updates…",
  live: "Live updates: connected.",
  reconnecting: "Connection lost: reconnecting…",
  polling: "Live updates are unavailable here: checking the job every few seconds.",
};
const STATUS = { queued: "Waiting for a free worker…", processing: "Working…", completed: "Done!" };

let catalogReady = false;
let shownImage = null;
let request = null; // what was asked for: names the picture for screen readers
let deletable = null; // the job the delete button is for

const generation = createImageGeneration({ onChange: render });

/** Show a state of the client (see State in s2s-client.js). */
function render(state) {
  const job = state.currentJob;
  button.disabled = !catalogReady || state.isGenerating;
  button.textContent = state.isGenerating ? `Generating… ${job?.progress ?? 0}%` : "Generate";

  $("error").hidden = !state.error;
  $("error").textContent = state.error ?? "";

  $("progress-section").hidden = !job;
  if (job) {
    $("progress").value = job.progress ?? 0;
    const words = job.status === "completed" ? STATUS.completed : job.message || STATUS[job.status] || "";
    $("status").textContent = job.status === "failed" || job.status === "cancelled" ? "Stopped." : `${job.progress ?? 0}% · ${words}`;
  }
  const place = describePlace(job); // "3rd in line, about 40 s" while queued
  $("place").hidden = !place;
  $("place").textContent = place;
  $("connection").textContent = CONNECTION[state.connection];

  $("delete-section").hidden = !job?.deleteToken;
  if (job?.deleteToken && job.jobId !== deletable) {
    deletable = job.jobId;
    $("delete-confirm").hidden = true;
    $("delete").hidden = false;
    $("delete-result").textContent = "";
  }

  const imageUrl = job?.status === "completed" ? job.result?.imageUrl : null;
  $("result").hidden = !imageUrl;
  if (!imageUrl && shownImage && !job) { // deleted: the page lets go of the picture too
    shownImage = null;
    $("picture").removeAttribute("src");
    $("download").href = "#";
  }
  if (imageUrl && imageUrl !== shownImage) {
    shownImage = imageUrl;
    const picture = $("picture");
    picture.src = imageUrl;
    picture.alt = `Storybook ${request?.kindName ?? "picture"} of ${request?.heroName ?? "the hero"}`;
    $("download").href = imageUrl;
    $("result-title").focus(); // keyboard and screen-reader users land on the result
  }
}

/** Fill the theme and style lists and the kinds from the server's catalog. */
async function loadCatalog() {
  let catalog;
  try {
    const response = await fetch("/api/catalog");
    catalog = await response.json();
    if (!response.ok) throw new Error(catalog.error);
  } catch (error) {
    $("error").hidden = false;
    $("error").textContent = `The choices could not be loaded: ${error.message}`;
    return;
  }
  const options = (select, items, chosen) => {
    select.replaceChildren(...items.map(([value, text]) => new Option(text, value, value === chosen, value === chosen)));
  };
  options($("theme"), catalog.themes.map((t) => [t.id, t.tagline ? `${t.name}: ${t.tagline}` : t.name]), catalog.defaults.themeId);
  options($("style"), catalog.styles.map((s) => [s.key, s.name]), catalog.defaults.styleKey);
  $("kinds").append(...catalog.kinds.map((kind) => {
    const label = document.createElement("label");
    const radio = Object.assign(document.createElement("input"), {
      type: "radio", name: "kind", value: kind.id, checked: kind.id === catalog.defaults.kind, required: true,
    });
    label.append(radio, kind.name);
    return label;
  }));
  catalogReady = true;
  render(generation.getState());
}

let previewUrl = null;
$("preview").addEventListener("error", () => { $("preview").hidden = true; }); // not a picture the browser can show
photo.addEventListener("change", () => {
  const preview = $("preview");
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = photo.files[0] ? URL.createObjectURL(photo.files[0]) : null;
  preview.hidden = !previewUrl;
  if (previewUrl) preview.src = previewUrl;
});

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  const fields = new FormData(form);
  shownImage = null;
  const kind = form.querySelector('input[name="kind"]:checked');
  request = { heroName: fields.get("heroName").trim(), kindName: kind?.parentElement.textContent.toLowerCase() };
  try {
    await generation.generateImage({
      heroName: request.heroName,
      originalImageBase64: photo.files[0],
      themeId: fields.get("themeId"),
      styleKey: fields.get("styleKey"),
      kind: kind?.value,
    });
  } catch {
    // refused: render() shows the server's sentence
  }
});

// Deleting asks first, in the page (a real dialog step, not window.confirm), and says what happened.
$("delete").addEventListener("click", () => {
  $("delete").hidden = true;
  $("delete-confirm").hidden = false;
  $("delete-yes").focus();
});
$("delete-no").addEventListener("click", () => {
  $("delete-confirm").hidden = true;
  $("delete").hidden = false;
  $("delete").focus();
});
$("delete-yes").addEventListener("click", async () => {
  const said = $("delete-result");
  $("delete-yes").disabled = $("delete-no").disabled = true;
  said.textContent = "Deleting…";
  try {
    await generation.deleteJob();
    said.textContent = "Deleted: your photo and picture are no longer on the server.";
  } catch (error) {
    said.textContent = `Not deleted: ${error.message}`;
    $("delete-confirm").hidden = true;
    $("delete").hidden = false;
  } finally {
    $("delete-yes").disabled = $("delete-no").disabled = false;
  }
  said.focus();
});

render(generation.getState());
loadCatalog();
