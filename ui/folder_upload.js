// The folder picker's page script (gr.HTML js_on_load; see ui/folder_upload.py). Given `element`, `props`, `server`.
//
// A folder comes from the browser's folder picker (webkitdirectory) or is dropped on the box. Its photos (by
// file type; hidden and system files are never sent) go to Gradio's upload route in batches, several at a
// time, with the progress shown; then the value is set, which fires the component's change event (the
// check): {name, files: [[path inside the chosen folder, server path], ...], left_out: [the other names],
// bytes, count, sent}. A folder over the server's limits is not sent at all: the value then carries no files,
// and the check says why.
const input = element.querySelector("input[type=file]");
const zone = element.querySelector(".ts-drop");
const status = element.querySelector(".ts-status");
const bar = element.querySelector("progress");
const rules = element.querySelector(".ts-folder").dataset;
const PHOTO_TYPES = new Set(rules.photoTypes.split("|"));
const SYSTEM_NAMES = new Set(rules.systemNames.split("|"));
const BATCH_FILES = 100; // photos per request (Gradio takes at most 1,000)
const BATCH_BYTES = 8 * 2 ** 20; // bytes per request, so that progress moves and a lost request costs little
const IN_FLIGHT = 4; // requests at once
const API = ((window.gradio_config && window.gradio_config.api_prefix) || "/gradio_api").replace(/^\/+/, "");
let generation = 0; // the latest folder given; an earlier one still sending is abandoned
let requests = [];

// As trainer.data.is_hidden and IMAGE_EXTENSIONS decide (their values come on the template's data attributes).
const hidden = (rel) => rel.split("/").some((part) => part.startsWith(".") || SYSTEM_NAMES.has(part.toLowerCase()));
const isPhoto = (rel) => {
  const name = rel.slice(rel.lastIndexOf("/") + 1);
  const dot = name.lastIndexOf(".");
  return dot > 0 && PHOTO_TYPES.has(name.slice(dot).toLowerCase());
};
const sizeWords = (size) => {
  for (const [unit, scale] of [["GB", 2 ** 30], ["MB", 2 ** 20], ["KB", 2 ** 10]]) {
    if (size >= scale) return `${(size / scale).toFixed(1).replace(/\.0$/, "")} ${unit}`;
  }
  return `${size} bytes`;
};
const plural = (n, word) => `${n.toLocaleString("en")} ${word}${n === 1 ? "" : "s"}`;
function say(text, progress) {
  status.textContent = text;
  bar.hidden = progress === undefined;
  if (progress !== undefined) bar.value = progress;
}
function topFolder(names) {
  const tops = new Set(names.map((name) => (name.includes("/") ? name.split("/")[0] : "")));
  return tops.size === 1 && !tops.has("") ? [...tops][0] : null;
}

// One request of Gradio's upload route (multipart "files"): the server paths of the batch's files, in order.
function post(batch, onProgress) {
  return new Promise((resolve, reject) => {
    const form = new FormData();
    for (const [, file] of batch) form.append("files", file, file.name);
    const xhr = new XMLHttpRequest();
    requests.push(xhr);
    // Relative to the page, as the page's own assets are: right behind a proxy or under a sub-path too.
    xhr.open("POST", new URL(`${API}/upload`, document.baseURI).href);
    xhr.upload.onprogress = (event) => onProgress(event.loaded);
    xhr.onload = () => {
      let paths = null;
      try {
        paths = JSON.parse(xhr.responseText);
      } catch (error) {
        // reported below
      }
      if (xhr.status !== 200 || !Array.isArray(paths) || paths.length !== batch.length) {
        reject(new Error(`the server answered ${xhr.status}: ${xhr.responseText.slice(0, 200)}`));
      } else {
        resolve(paths);
      }
    };
    xhr.onerror = () => reject(new Error("the connection to the server failed"));
    xhr.onabort = () => reject(new Error("abandoned"));
    xhr.send(form);
  });
}

async function sendPhotos(photos, total, run, name) {
  const batches = [];
  let batch = [];
  let bytes = 0;
  for (const item of photos) {
    if (batch.length && (batch.length >= BATCH_FILES || bytes + item[1].size > BATCH_BYTES)) {
      batches.push(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(item);
    bytes += item[1].size;
  }
  batches.push(batch);
  const sizes = batches.map((b) => b.reduce((sum, [, file]) => sum + file.size, 0));
  const loaded = batches.map(() => 0);
  const paths = [];
  let next = 0;
  const show = () => {
    const sent = loaded.reduce((a, b) => a + b, 0);
    say(`Sending ${plural(photos.length, "photo")} from ${name}: ${sizeWords(sent)} of ${sizeWords(total)}`,
        total ? sent / total : 1);
  };
  async function worker() {
    while (next < batches.length && run === generation) {
      const i = next++;
      paths[i] = await post(batches[i], (n) => {
        loaded[i] = Math.min(n, sizes[i]);
        show();
      });
      loaded[i] = sizes[i];
      show();
    }
  }
  show();
  await Promise.all(Array.from({ length: Math.min(IN_FLIGHT, batches.length) }, worker));
  return paths.flat();
}

// entries: [[path inside the chosen folder, File], ...]
async function send(entries) {
  const run = ++generation;
  for (const xhr of requests) xhr.abort();
  requests = [];
  const kept = entries.filter(([rel]) => !hidden(rel));
  const photos = kept.filter(([rel]) => isPhoto(rel));
  const leftOut = kept.filter(([rel]) => !isPhoto(rel)).map(([rel]) => rel);
  const top = topFolder(entries.map(([rel]) => rel));
  const name = top || (entries.length ? "the dropped files" : "the folder");
  const bytes = photos.reduce((sum, [, file]) => sum + file.size, 0);
  const count = photos.length + leftOut.length;
  const answer = (files) => {
    if (run === generation) props.value = { name: top, files, left_out: leftOut, bytes, count, sent: Date.now() };
  };
  let limits = null;
  try {
    limits = await server.folder_limits();
  } catch (error) {
    // the server checks again when the files arrive
  }
  if (run !== generation) return;
  if (limits && (count > limits.max_files || bytes > limits.max_bytes)) {
    say(`Not sent: ${plural(count, "file")}, ${sizeWords(bytes)} of photos in ${name} is more than one upload ` +
        "may hold here.");
    answer([]);
    return;
  }
  if (!photos.length) {
    say(`No photos found in ${name}; nothing was sent.`);
    answer([]);
    return;
  }
  const started = performance.now();
  let paths;
  try {
    paths = await sendPhotos(photos, bytes, run, name);
  } catch (error) {
    if (run === generation) {
      for (const xhr of requests) xhr.abort(); // the other batches of this folder are of no use now
      say(`The upload of ${name} stopped (${error.message}); choose the folder again.`);
    }
    return;
  }
  if (run !== generation) return;
  const seconds = ((performance.now() - started) / 1000).toFixed(1);
  say(`Sent ${plural(photos.length, "photo")} (${sizeWords(bytes)}) from ${name} in ${seconds} s` +
      (leftOut.length ? `; ${plural(leftOut.length, "other file")} not sent (the report lists them).` : "."));
  answer(photos.map(([rel], i) => [rel, paths[i]]));
}

// A dropped folder, walked: its files with their paths from the dropped folder's name on.
async function walk(roots) {
  const found = [];
  const stack = [...roots];
  while (stack.length) {
    const entry = stack.pop();
    const rel = entry.fullPath.replace(/^\/+/, "");
    if (hidden(rel)) continue; // never walk into .git or __MACOSX
    if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) { // readEntries gives a folder's entries a hundred or so at a time
        const some = await new Promise((ok, fail) => reader.readEntries(ok, fail));
        if (!some.length) break;
        stack.push(...some);
      }
    } else if (entry.isFile) {
      found.push([rel, await new Promise((ok, fail) => entry.file(ok, fail))]);
    }
  }
  return found.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
}

element.querySelector(".ts-choose").addEventListener("click", () => input.click());
input.addEventListener("change", () => {
  const entries = [...input.files].map((file) => [file.webkitRelativePath || file.name, file]);
  input.value = ""; // choosing the same folder again is a new choice
  send(entries);
});
zone.addEventListener("dragover", (event) => {
  event.preventDefault();
  zone.classList.add("ts-over");
});
zone.addEventListener("dragleave", () => zone.classList.remove("ts-over"));
zone.addEventListener("drop", async (event) => {
  event.preventDefault();
  zone.classList.remove("ts-over");
  // The entries must be taken while the drop event runs; the browser empties the list after it.
  const items = [...(event.dataTransfer.items || [])].filter((item) => item.kind === "file");
  const roots = items.map((item) => item.webkitGetAsEntry && item.webkitGetAsEntry()).filter(Boolean);
  const files = [...(event.dataTransfer.files || [])];
  say("Reading the folder…");
  try {
    send(roots.length ? await walk(roots) : files.map((file) => [file.name, file]));
  } catch (error) {
    say(`The folder could not be read (${error.message || error}); choose it with the button instead.`);
  }
});
