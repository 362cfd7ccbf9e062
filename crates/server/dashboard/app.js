// The sandgate dashboard: an organization's sandboxes through the API,
// with the organization's key. Everything shown that came from the API is
// set as text, never as markup: a name a sandbox looked up is not trusted.
// @ts-check

/** @typedef {{code: string, message: string, field?: string}} ErrorDetail */
/** @typedef {{id: string, name: string, state: string, createdAt: string,
 *   networkBlockAll: boolean, networkAllowList: string | null,
 *   domainAllowList: string | null, networkDenyList: string | null,
 *   domainDenyList: string | null, essentialServices: boolean,
 *   networkApprovals: boolean, effectiveNetwork: Record<string, unknown>}} Sandbox */
/** @typedef {{id: string, target: string, kind: string, state: string,
 *   attempts: number, port?: number, protocol?: string}} AccessRequest */
/** @typedef {{timeMs: number, kind: string, reason: string, protocol: string,
 *   destination?: string, port?: number, domain?: string}} NetworkEvent */
/** @typedef {{id: number, startMs: number, endMs: number | null, protocol: string,
 *   source: string, sourcePort: number | null, destination: string,
 *   port: number | null, name: string | null, nameSource: string | null,
 *   bytesOut: number, bytesIn: number, verdict: string, reason: string,
 *   rule: string | null, via: string}} Flow */

const KEY = "sandgate.key";

/** An error answer of the API. */
class ApiFailure extends Error {
  /** @param {number} status @param {ErrorDetail} detail */
  constructor(status, detail) {
    super(`${detail.code}: ${detail.message}`);
    this.status = status;
    this.detail = detail;
  }
}

/** @template {HTMLElement} T @param {string} id @param {new () => T} type @returns {T} */
function byId(id, type) {
  const el = document.getElementById(id);
  if (!(el instanceof type)) {
    throw new Error(`no ${type.name} #${id}`);
  }
  return el;
}

/** @param {string} tag @param {string} text @param {string} [cls] */
function element(tag, text, cls) {
  const el = document.createElement(tag);
  el.textContent = text;
  if (cls) {
    el.className = cls;
  }
  return el;
}

/** @returns {string | null} */
function key() {
  return sessionStorage.getItem(KEY);
}

/**
 * Calls the API with the organization's key.
 * @param {string} method @param {string} path @param {unknown} [body]
 * @returns {Promise<any>}
 */
async function api(method, path, body) {
  /** @type {Record<string, string>} */
  const headers = { Authorization: `Bearer ${key() ?? ""}` };
  if (body !== undefined) {
    headers["Content-Type"] = "application/json";
  }
  const response = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) {
    return null;
  }
  const text = await response.text();
  /** @type {any} */
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (!response.ok) {
    const detail = parsed && parsed.error
      ? parsed.error
      : { code: `http_${response.status}`, message: text || response.statusText };
    throw new ApiFailure(response.status, detail);
  }
  return parsed;
}

/**
 * Follows a server-sent event stream of the API until `signal` aborts it,
 * calling `each` with every event's name and parsed data.
 * @param {string} path @param {AbortSignal} signal
 * @param {(name: string, data: any) => void} each
 */
async function follow(path, signal, each) {
  const response = await fetch(path, {
    headers: { Authorization: `Bearer ${key() ?? ""}`, Accept: "text/event-stream" },
    signal,
  });
  if (!response.ok || !response.body) {
    throw new Error(`${path}: ${response.status}`);
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) {
      return;
    }
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      let data = "";
      for (const line of block.split("\n")) {
        if (line.startsWith("event:")) {
          name = line.slice(6).trim();
        } else if (line.startsWith("data:")) {
          data += line.slice(5).trim();
        }
      }
      if (!data) {
        continue;
      }
      // One record that cannot be read or shown is skipped, not the end
      // of the stream.
      try {
        each(name, JSON.parse(data));
      } catch (e) {
        console.warn(`skipped a ${name} record: ${e}`);
      }
    }
  }
}

// ------------------------------------------------------------ the forms --

const LISTS = ["networkAllowList", "domainAllowList", "networkDenyList", "domainDenyList"];
const FLAGS = ["networkBlockAll", "essentialServices", "networkApprovals"];

/** @param {HTMLFormElement} form @param {string} name @returns {HTMLInputElement} */
function input(form, name) {
  const el = form.elements.namedItem(name);
  if (!(el instanceof HTMLInputElement)) {
    throw new Error(`no input ${name}`);
  }
  return el;
}

/** Clears a form's error messages. @param {HTMLFormElement} form */
function clearErrors(form) {
  for (const el of form.querySelectorAll(".error")) {
    el.textContent = "";
  }
}

/**
 * Shows an API error next to its field, or in `general`.
 * @param {HTMLFormElement} form @param {HTMLElement} general @param {unknown} e
 */
function showError(form, general, e) {
  if (e instanceof ApiFailure) {
    const at = e.detail.field
      ? form.querySelector(`[data-error-for="${CSS.escape(e.detail.field)}"]`)
      : null;
    (at ?? general).textContent = `${e.detail.code}: ${e.detail.message}`;
  } else {
    general.textContent = String(e);
  }
}

/** The network settings of a form: those that differ from `from`.
 * @param {HTMLFormElement} form @param {Partial<Sandbox>} from
 * @returns {Record<string, string | boolean>} */
function settings(form, from) {
  /** @type {Record<string, string | boolean>} */
  const out = {};
  const was = /** @type {Record<string, unknown>} */ (from);
  for (const name of LISTS) {
    const value = input(form, name).value.trim();
    if (value !== (was[name] ?? "")) {
      out[name] = value;
    }
  }
  for (const name of FLAGS) {
    const value = input(form, name).checked;
    if (value !== (was[name] ?? name === "essentialServices")) {
      out[name] = value;
    }
  }
  return out;
}

/** Puts a sandbox's stored settings in a form.
 * @param {HTMLFormElement} form @param {Sandbox} sandbox */
function fill(form, sandbox) {
  const from = /** @type {Record<string, unknown>} */ (/** @type {unknown} */ (sandbox));
  for (const name of LISTS) {
    input(form, name).value = String(from[name] ?? "");
  }
  for (const name of FLAGS) {
    input(form, name).checked = Boolean(from[name]);
  }
}

// ----------------------------------------------------------- the views --

/** @type {Sandbox | null} */
let selected = null;
/** @type {AbortController | null} */
let streams = null;

async function signIn() {
  const org = await api("GET", "/api/organization");
  byId("who", HTMLSpanElement).textContent = `${org.name} (tier ${org.tier})`;
  byId("sign-in", HTMLElement).hidden = true;
  byId("app", HTMLElement).hidden = false;
  byId("sign-out", HTMLButtonElement).hidden = false;
  await list();
}

async function list() {
  const error = byId("list-error", HTMLParagraphElement);
  error.textContent = "";
  /** @type {Sandbox[]} */
  let sandboxes;
  try {
    sandboxes = await api("GET", "/api/sandbox");
  } catch (e) {
    error.textContent = String(e);
    return;
  }
  const body = byId("sandboxes", HTMLTableSectionElement);
  body.replaceChildren();
  for (const s of sandboxes) {
    const row = document.createElement("tr");
    row.className = "sandbox";
    row.dataset.name = s.name;
    if (selected && selected.id === s.id) {
      row.classList.add("selected");
    }
    row.append(
      element("td", s.name),
      element("td", s.state),
      element("td", String(s.effectiveNetwork.mode ?? "")),
      element("td", s.createdAt),
    );
    row.addEventListener("click", () => {
      open(s.id).catch((e) => {
        error.textContent = String(e);
      });
    });
    body.append(row);
  }
}

/** @param {string} id */
async function open(id) {
  streams?.abort();
  streams = new AbortController();
  /** @type {Sandbox} */
  const sandbox = await api("GET", `/api/sandbox/${encodeURIComponent(id)}`);
  selected = sandbox;
  byId("detail", HTMLElement).hidden = false;
  byId("detail-name", HTMLSpanElement).textContent = sandbox.name;
  show(sandbox);
  byId("events", HTMLUListElement).replaceChildren();
  byId("flows", HTMLTableSectionElement).replaceChildren();
  byId("requests", HTMLUListElement).replaceChildren();
  byId("test-results", HTMLTableSectionElement).replaceChildren();
  byId("explanation", HTMLParagraphElement).textContent = "";
  const path = `/api/sandbox/${encodeURIComponent(id)}/network`;
  const signal = streams.signal;
  follow(`${path}/events?follow=true`, signal, (_name, data) => showEvent(data)).catch(ended);
  follow(`${path}/requests?follow=true`, signal, (_name, data) => showRequest(data)).catch(ended);
  follow(`${path}/flows?follow=true`, signal, (name, data) => {
    if (name === "flow") showFlow(data);
  }).catch(ended);
  await list();
}

/** A followed stream ended: by an abort (another sandbox), or say so.
 * @param {unknown} e */
function ended(e) {
  if (!(e instanceof DOMException && e.name === "AbortError")) {
    byId("events", HTMLUListElement).prepend(element("li", `stream ended: ${e}`));
  }
}

/** Shows a sandbox's state, effective policy and stored settings.
 * @param {Sandbox} sandbox */
function show(sandbox) {
  byId("detail-state", HTMLElement).textContent = sandbox.state;
  const dl = byId("effective", HTMLElement);
  dl.replaceChildren();
  for (const [name, value] of Object.entries(sandbox.effectiveNetwork)) {
    const text = typeof value === "string" ? value : JSON.stringify(value);
    dl.append(element("dt", name), element("dd", text));
  }
  fill(byId("edit-form", HTMLFormElement), sandbox);
}

/** @param {NetworkEvent} e */
function showEvent(e) {
  const where = e.domain ?? `${e.destination ?? ""}${e.port ? `:${e.port}` : ""}`;
  const when = new Date(e.timeMs);
  const time = Number.isNaN(when.getTime()) ? "-" : when.toISOString();
  // The kinds the page styles; anything else gets no class of its own.
  const cls = ["connection", "dns", "budget", "dropped"].includes(e.kind) ? e.kind : "other";
  const li = element("li", `${time} ${e.kind} ${e.protocol} ${where} ${e.reason}`, cls);
  byId("events", HTMLUListElement).prepend(li);
}

/** A record of the flow log: a row of its own, updated in place when
 * the flow ends (the same id comes again).
 * @param {Flow} f */
function showFlow(f) {
  const body = byId("flows", HTMLTableSectionElement);
  const found = body.querySelector(`tr[data-id="${f.id}"]`);
  const row = found instanceof HTMLTableRowElement ? found : document.createElement("tr");
  if (row !== found) {
    row.dataset.id = String(f.id);
    body.prepend(row);
    // The latest few hundred; the API has the rest.
    while (body.rows.length > 500) body.deleteRow(-1);
  }
  const to = `${f.destination}${f.port ? `:${f.port}` : ""}`;
  const name = f.name ? `${f.name} (${f.nameSource ?? "?"})` : "";
  const when = new Date(f.startMs);
  const time = Number.isNaN(when.getTime()) ? "-" : when.toISOString();
  row.className = f.verdict === "denied" ? "denied" : "";
  row.replaceChildren(
    ...[time, f.endMs === null ? "open" : "ended", f.protocol, to, name, f.verdict, f.reason,
      `${f.bytesOut} / ${f.bytesIn}`, f.via].map((t) => element("td", t)),
  );
}

/** @param {AccessRequest} r */
function showRequest(r) {
  const list = byId("requests", HTMLUListElement);
  const found = list.querySelector(`li[data-id="${CSS.escape(r.id)}"]`);
  const li = found instanceof HTMLLIElement ? found : document.createElement("li");
  if (li !== found) {
    li.dataset.id = r.id;
    list.prepend(li);
  }
  const port = r.port ? `:${r.port}` : "";
  li.replaceChildren(element("span", `${r.target}${port} (${r.kind}) ${r.state}, ${r.attempts} attempts `));
  if (r.state === "pending" && selected) {
    const base = `/api/sandbox/${encodeURIComponent(selected.id)}/network/requests/${encodeURIComponent(r.id)}`;
    for (const [label, verb] of [["Approve", "approve"], ["Deny", "deny"]]) {
      const button = element("button", label);
      button.addEventListener("click", () => {
        api("POST", `${base}/${verb}`, {})
          .then((decided) => showRequest(decided))
          .catch((e) => li.append(element("span", ` ${e}`, "error")));
      });
      li.append(button);
    }
  }
}

// ------------------------------------------------------------- wiring --

function wire() {
  const template = byId("network-fields", HTMLTemplateElement);
  for (const fieldset of document.querySelectorAll("fieldset.network")) {
    fieldset.append(template.content.cloneNode(true));
  }

  byId("sign-in-form", HTMLFormElement).addEventListener("submit", (ev) => {
    ev.preventDefault();
    const error = byId("sign-in-error", HTMLParagraphElement);
    error.textContent = "";
    sessionStorage.setItem(KEY, byId("key", HTMLInputElement).value.trim());
    signIn().catch((e) => {
      sessionStorage.removeItem(KEY);
      error.textContent = e instanceof ApiFailure ? e.message : String(e);
    });
  });

  byId("sign-out", HTMLButtonElement).addEventListener("click", () => {
    streams?.abort();
    sessionStorage.removeItem(KEY);
    location.reload();
  });

  byId("refresh", HTMLButtonElement).addEventListener("click", () => void list());

  const create = byId("create-form", HTMLFormElement);
  create.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(create);
    /** @type {Record<string, string | boolean>} */
    const body = settings(create, {});
    for (const name of LISTS) {
      if (body[name] === "") {
        delete body[name];
      }
    }
    const name = input(create, "name").value.trim();
    if (name) {
      body.name = name;
    }
    api("POST", "/api/sandbox", body)
      .then(async (made) => {
        create.reset();
        await open(made.id);
      })
      .catch((e) => showError(create, byId("create-error", HTMLParagraphElement), e));
  });

  const edit = byId("edit-form", HTMLFormElement);
  edit.addEventListener("submit", (ev) => {
    ev.preventDefault();
    clearErrors(edit);
    const ok = byId("edit-ok", HTMLParagraphElement);
    ok.textContent = "";
    if (!selected) {
      return;
    }
    const change = settings(edit, selected);
    api("POST", `/api/sandbox/${encodeURIComponent(selected.id)}/network-settings`, change)
      .then(async (/** @type {Sandbox} */ updated) => {
        selected = updated;
        show(updated);
        ok.textContent = "Saved: in force now.";
        await list();
      })
      .catch((e) => showError(edit, byId("edit-error", HTMLParagraphElement), e));
  });

  byId("delete", HTMLButtonElement).addEventListener("click", () => {
    if (!selected) {
      return;
    }
    streams?.abort();
    api("DELETE", `/api/sandbox/${encodeURIComponent(selected.id)}`)
      .then(async () => {
        selected = null;
        byId("detail", HTMLElement).hidden = true;
        await list();
      })
      .catch((e) => { byId("edit-error", HTMLParagraphElement).textContent = String(e); });
  });

  const explain = byId("explain-form", HTMLFormElement);
  explain.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const out = byId("explanation", HTMLParagraphElement);
    if (!selected) {
      return;
    }
    const dest = input(explain, "dest").value.trim();
    const path = `/api/sandbox/${encodeURIComponent(selected.id)}/network/explain?dest=${encodeURIComponent(dest)}`;
    api("GET", path)
      .then((x) => {
        out.className = x.allowed ? "allowed" : "denied";
        out.textContent = `${x.destination}: ${x.allowed ? "allowed" : "denied"} (${x.reason}) ${x.rule}`;
      })
      .catch((e) => {
        out.className = "error";
        out.textContent = String(e);
      });
  });

  byId("test", HTMLButtonElement).addEventListener("click", () => {
    if (!selected) {
      return;
    }
    const body = byId("test-results", HTMLTableSectionElement);
    body.replaceChildren(element("tr", "running..."));
    api("POST", `/api/sandbox/${encodeURIComponent(selected.id)}/network/test`, {})
      .then((result) => {
        body.replaceChildren();
        for (const r of result.results) {
          const row = document.createElement("tr");
          row.append(
            element("td", r.target),
            element("td", r.expected ? "allowed" : "denied"),
            element("td", r.observed ? "reached" : "not reached"),
            element("td", r.reason),
            element("td", r.ok ? "yes" : "NO", r.ok ? "allowed" : "denied"),
          );
          body.append(row);
        }
      })
      .catch((e) => body.replaceChildren(element("tr", String(e), "error")));
  });

  if (key()) {
    signIn().catch(() => sessionStorage.removeItem(KEY));
  }
}

wire();
