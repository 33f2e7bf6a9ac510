/**
 * s2s-client.js: the browser side of s2s, one ES module, no dependencies, no build step.
 *
 * It submits a photo (POST /api/jobs/generate-image), then follows the job live over /ws.
 * After a dropped socket it reconnects with backoff and resubscribes with `lastSeq`, so it
 * gets exactly the events it missed; a server that says it is busy (an error frame with
 * `retryAfterMs`, or close code 1013 Try Again Later) is left alone at least that long, jittered;
 * where WebSockets cannot be used (a proxy refuses the upgrade) it follows the job's Server-Sent
 * Events (GET /api/jobs/<id>/stream, resumed after the last `seq` seen), and where those fail too
 * it polls the job's status URL instead. The shape is the original service's `useImageGeneration` hook:
 *
 *   import { createImageGeneration } from "https://api.example.com/static/s2s-client.js";
 *   const gen = createImageGeneration({ baseUrl: "https://api.example.com",
 *     onProgress: (job) => console.log(job.progress, job.message),
 *     onCompleted: (result) => console.log("ready:", result.imageUrl),
 *     onFailed: (error) => console.error(error.error) });
 *   const job = await gen.generateImage({ heroName: "Mia", originalImageBase64: file, themeId: "space" });
 *   await gen.deleteJob();  // the parent removes the photo and the picture from the server
 *
 * @module s2s-client
 */

const ENDED = new Set(["completed", "failed", "cancelled"]);
const JOB_FRAMES = new Set(["job_progress", "job_completed", "job_failed", "job_cancelled"]);
const SUBMIT_TRIES = 3; // a POST lost to the network is sent again with the same Idempotency-Key

/**
 * The job as the client knows it: the shape of GET /api/jobs/<id>/status, kept up to date by events.
 * @typedef {Object} Job
 * @property {string} jobId
 * @property {"queued"|"processing"|"completed"|"failed"|"cancelled"} status
 * @property {number} progress  0 to 100
 * @property {string} [message]  the server's words for the current step
 * @property {{imageUrl: string}} [result]  once completed
 * @property {string} [error]  once failed: a sentence a person can read
 * @property {number} [seq]  the last event applied (rises by one per event of the job)
 * @property {number|null} [queuePosition]  while queued: the place in line, 1 = starts next (null: not in line,
 *   a retry waiting out its backoff)
 * @property {number|null} [etaSeconds]  while queued: about how long until the picture is ready (null: the
 *   server cannot estimate it honestly, e.g. no worker is running or the queue is paused)
 * @property {string} [deleteToken]  the job's key to {@link ImageGeneration#deleteJob}, from the submission's
 *   answer (the server shows it only there: keep it, e.g. in localStorage, to delete after a reload)
 */

/**
 * Everything a view needs; a new object on every change (so it suits React's useSyncExternalStore).
 * @typedef {Object} State
 * @property {Job|null} currentJob
 * @property {boolean} isGenerating  a submission or a job is under way
 * @property {string|null} error  the server's sentence when a submission was refused or the job failed
 * @property {string|null} errorCode  its machine code (`invalid_image`, `rate_limited`, ...)
 * @property {"idle"|"connecting"|"live"|"reconnecting"|"polling"} connection  how the job is being followed
 */

/** A submission that made no job: refused by the server (its `{error, code, details}`) or not delivered. */
export class S2SError extends Error {
  /**
   * @param {string} message  the server's sentence, or ours when it could not be reached
   * @param {{code?: string, status?: number, details?: Object}} [info]
   */
  constructor(message, { code = "error", status = 0, details } = {}) {
    super(message);
    this.name = "S2SError";
    this.code = code;
    this.status = status;
    this.details = details;
  }
}

/**
 * Read a File or Blob as a `data:` URL, the form the API takes.
 * @param {Blob} blob
 * @returns {Promise<string>}
 */
export function fileToDataUrl(blob) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(/** @type {string} */ (reader.result));
    reader.onerror = () => reject(new S2SError("The photo could not be read.", { code: "unreadable_file" }));
    reader.readAsDataURL(blob);
  });
}

/** A random key that works outside secure contexts too (crypto.randomUUID does not). */
function randomKey() {
  return Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * Submits jobs and follows one at a time. Create one per view.
 */
export class ImageGeneration {
  /**
   * @param {Object} [options]
   * @param {string} [options.baseUrl]  the API's origin, e.g. "https://api.example.com"; default this
   *   page's (required outside a browser, e.g. when rendered on a server)
   * @param {(job: Job) => void} [options.onProgress]  every step of a job still running
   * @param {(result: {imageUrl: string}, job: Job) => void} [options.onCompleted]
   * @param {(error: {error: string, code: string, jobId?: string}) => void} [options.onFailed]
   *   a refused submission, a failed or a cancelled job
   * @param {(state: State) => void} [options.onChange]  every state change (or use subscribe)
   * @param {typeof WebSocket|null} [options.WebSocket]  default the browser's; null: no socket (events, then polling)
   * @param {typeof EventSource|null} [options.EventSource]  default the browser's; null: after sockets, poll
   * @param {number} [options.pollIntervalMs=1500]  status polling period when sockets are unavailable
   * @param {number} [options.reconnectBaseMs=500]  first reconnect delay; doubles per try, jittered
   * @param {number} [options.reconnectMaxMs=10000]  longest reconnect delay
   * @param {number} [options.tryAgainLaterMs=2000]  least wait after close code 1013 (Try Again Later), jittered
   * @param {number} [options.maxFailedOpens=3]  sockets (then event streams) that never open in a row before
   *   the next way of following a job: WebSocket, then Server-Sent Events, then polling
   * @param {number} [options.heartbeatMs=20000]  ping period; a socket silent for two is dropped
   */
  constructor(options = {}) {
    this.apiUrl = (options.baseUrl || globalThis.location?.origin || "").replace(/\/+$/, "");
    const ws = new URL(`${this.apiUrl}/ws`);
    ws.protocol = ws.protocol === "https:" ? "wss:" : "ws:";
    this.wsUrl = ws.href;
    this.callbacks = options;
    this.WebSocket = options.WebSocket === undefined ? globalThis.WebSocket : options.WebSocket;
    this.EventSource = options.EventSource === undefined ? globalThis.EventSource : options.EventSource;
    this.pollIntervalMs = options.pollIntervalMs ?? 1500;
    this.reconnectBaseMs = options.reconnectBaseMs ?? 500;
    this.reconnectMaxMs = options.reconnectMaxMs ?? 10000;
    this.tryAgainLaterMs = options.tryAgainLaterMs ?? 2000;
    this.maxFailedOpens = options.maxFailedOpens ?? 3;
    this.heartbeatMs = options.heartbeatMs ?? 20000;
    /** @type {State} */
    this.state = Object.freeze({ currentJob: null, isGenerating: false, error: null, errorCode: null, connection: "idle" });
    this.listeners = new Set();
    this.watch = null;
  }

  /** The current {@link State}. */
  getState = () => this.state;

  /**
   * Call `listener` on every state change.
   * @param {() => void} listener
   * @returns {() => void} unsubscribe
   */
  subscribe = (listener) => {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  };

  /**
   * Submit a photo and follow the job to its end.
   * @param {Object} params
   * @param {string} params.heroName
   * @param {string|Blob} params.originalImageBase64  a `data:image/...;base64,` URL, or a File/Blob to read
   * @param {string} [params.themeId]
   * @param {string} [params.styleKey]
   * @param {string} [params.kind]  "cover" or "page"
   * @returns {Promise<Job>} the job once it completed, failed or was cancelled
   * @throws {S2SError} when no job was made (the server refused it, or could not be reached)
   */
  async generateImage({ heroName, originalImageBase64, themeId, styleKey, kind }) {
    this.stop();
    this._set({ currentJob: null, isGenerating: true, error: null, errorCode: null, connection: "idle" });
    let accepted;
    try {
      const photo = originalImageBase64 instanceof Blob ? await fileToDataUrl(originalImageBase64) : originalImageBase64;
      const body = { heroName, originalImageBase64: photo };
      for (const [key, value] of Object.entries({ themeId, styleKey, kind })) if (value) body[key] = value;
      accepted = await this._submit(body);
    } catch (error) {
      const failure = { error: error.message, code: error.code || "error" };
      this._set({ isGenerating: false, error: failure.error, errorCode: failure.code });
      this.callbacks.onFailed?.(failure);
      throw error;
    }
    this._set({ currentJob: { jobId: accepted.jobId, status: "queued", progress: 0, message: accepted.message,
      deleteToken: accepted.deleteToken } });
    return this.watchJob(accepted.jobId);
  }

  /**
   * Follow a job already submitted (after a page reload, say) until it ends.
   * @param {string} jobId
   * @returns {Promise<Job>} the job once ended, or as it stood when {@link stop} was called
   */
  watchJob(jobId) {
    this.stop();
    if (this.state.currentJob?.jobId !== jobId) this._set({ currentJob: { jobId, status: "queued", progress: 0 } });
    this._set({ isGenerating: true, error: null, errorCode: null });
    return new Promise((resolve) => {
      this.watch = { jobId, lastSeq: -1, socket: null, timer: null, heartbeat: null, attempts: 0, failedOpens: 0, ended: false, resolve };
      this.WebSocket ? this._connect(this.watch) : this._withoutSockets(this.watch);
    });
  }

  /** Stop following the current job (its promise resolves with the job as it stands). */
  stop() {
    const watch = this.watch;
    if (!watch) return;
    this._finish(watch);
    this._set({ isGenerating: false });
  }

  /**
   * Delete a job on the server: it is stopped if it runs, and its photo, picture and record are removed.
   * Resolves once nothing of it is kept (also when it was already gone); following it stops.
   * @param {string} [jobId]  default the current job
   * @param {string} [deleteToken]  the `deleteToken` its submission answered; default the current job's
   * @returns {Promise<void>}
   * @throws {S2SError} when the server refused (`forbidden`: not this job's token) or could not be reached
   */
  async deleteJob(jobId = this.state.currentJob?.jobId, deleteToken = jobId === this.state.currentJob?.jobId
    ? this.state.currentJob?.deleteToken : undefined) {
    if (!jobId || !deleteToken) throw new S2SError("There is no job to delete, or no delete token for it.", { code: "no_delete_token" });
    const current = this.state.currentJob?.jobId === jobId;
    const following = current && this.watch !== null;
    if (current) this.stop(); // first: the job_cancelled its deletion sends is no failure to report
    try {
      await this._delete(`${this.apiUrl}/api/jobs/${encodeURIComponent(jobId)}`, deleteToken);
    } catch (error) {
      if (following) this.watchJob(jobId); // nothing was deleted: go on following it
      throw error;
    }
    if (this.state.currentJob?.jobId === jobId) {
      this._set({ currentJob: null, isGenerating: false, error: null, errorCode: null, connection: "idle" });
    }
  }

  async _delete(url, deleteToken) {
    for (let attempt = 1; ; attempt++) {
      let response;
      try {
        response = await fetch(url, { method: "DELETE", headers: { Authorization: `Bearer ${deleteToken}` } });
      } catch {
        if (attempt >= SUBMIT_TRIES) throw new S2SError("The server cannot be reached; check the connection and try again.", { code: "network_error" });
        await sleep(this._backoff(attempt - 1));
        continue;
      }
      if (response.status === 204) return;
      const answer = await response.json().catch(() => ({}));
      if (answer.code === "job_not_found") return; // gone already (an earlier try, or it expired)
      throw new S2SError(answer.error || `The server answered HTTP ${response.status}.`,
        { code: answer.code || `http_${response.status}`, status: response.status, details: answer.details });
    }
  }

  // ---- submitting -------------------------------------------------------------------------------

  async _submit(body) {
    const headers = { "Content-Type": "application/json", "Idempotency-Key": randomKey() };
    const payload = JSON.stringify(body);
    for (let attempt = 1; ; attempt++) {
      let response;
      try {
        response = await fetch(`${this.apiUrl}/api/jobs/generate-image`, { method: "POST", headers, body: payload });
      } catch {
        if (attempt >= SUBMIT_TRIES) throw new S2SError("The server cannot be reached; check the connection and try again.", { code: "network_error" });
        await sleep(this._backoff(attempt - 1));
        continue;
      }
      const answer = await response.json().catch(() => ({}));
      if (response.status === 202) return answer;
      throw new S2SError(answer.error || `The server answered HTTP ${response.status}.`,
        { code: answer.code || `http_${response.status}`, status: response.status, details: answer.details });
    }
  }

  // ---- following a job over /ws -------------------------------------------------------------------

  _connect(watch) {
    let opened = false;
    const socket = new this.WebSocket(this.wsUrl);
    watch.socket = socket;
    watch.heardAt = Date.now();
    this._set({ connection: watch.attempts ? "reconnecting" : "connecting" });
    socket.onopen = () => {
      opened = true;
      watch.failedOpens = 0; // attempts start over only once the job's frames flow (see _onFrame)
      const frame = { type: "subscribe_to_job", jobId: watch.jobId };
      if (watch.lastSeq >= 0) frame.lastSeq = watch.lastSeq; // the server sends every event after it
      socket.send(JSON.stringify(frame));
      watch.heartbeat = setInterval(() => this._heartbeat(watch, socket), this.heartbeatMs);
      this._set({ connection: "live" });
    };
    socket.onmessage = (event) => this._onFrame(watch, socket, event.data);
    socket.onclose = (event) => this._socketGone(watch, socket, opened, event.code === 1013 ? this.tryAgainLaterMs : 0);
  }

  _onFrame(watch, socket, data) {
    watch.heardAt = Date.now();
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.jobId !== watch.jobId) return; // pong, connection_confirmed, other jobs
    if (JOB_FRAMES.has(frame.type)) {
      watch.attempts = 0; // subscribed: a later drop starts the backoff over
      this._apply(watch, frame);
    } else if (frame.type === "error" && frame.code === "job_not_found") {
      this._apply(watch, { status: "failed", error: frame.error, code: frame.code });
    } else if (frame.type === "error") {
      // "unavailable", "overloaded" and the like: try again on a new socket, after retryAfterMs if the server said
      this._socketGone(watch, socket, true, Number(frame.retryAfterMs) || 0);
    }
  }

  /** Ping; a socket that said nothing for two periods is dead even if the browser has not noticed. */
  _heartbeat(watch, socket) {
    if (Date.now() - watch.heardAt > 2 * this.heartbeatMs) return this._socketGone(watch, socket, true);
    socket.send('{"type":"ping"}');
  }

  /**
   * The socket closed or was given up: reconnect with backoff, or poll if sockets never open here.
   * `retryAfterMs`: the server asked for at least that long; waited with up to half again of jitter, so that
   * the clients it turned away together come back spread out.
   */
  _socketGone(watch, socket, opened, retryAfterMs = 0) {
    if (watch.socket !== socket) return; // an old socket's late news
    watch.socket = null;
    clearInterval(watch.heartbeat);
    socket.onclose = socket.onmessage = socket.onopen = null;
    if (socket.readyState <= 1) socket.close();
    if (watch.ended) return;
    if (!opened && ++watch.failedOpens >= this.maxFailedOpens) return this._withoutSockets(watch);
    this._set({ connection: "reconnecting" });
    const delay = Math.max(this._backoff(watch.attempts++), retryAfterMs * (1 + Math.random() / 2));
    watch.timer = setTimeout(() => watch.ended || this._connect(watch), delay);
  }

  _backoff(attempt) {
    const delay = Math.min(this.reconnectMaxMs, this.reconnectBaseMs * 2 ** attempt);
    return delay / 2 + Math.random() * delay / 2;
  }

  // ---- following a job over Server-Sent Events (GET /stream), where sockets cannot be used ---------

  /** Sockets never open here: the job's event stream if the browser has EventSource, else polling. */
  _withoutSockets(watch) {
    watch.failedOpens = 0;
    watch.attempts = 0;
    return this.EventSource ? this._stream(watch) : this._poll(watch);
  }

  /**
   * One EventSource on the job's stream, from the last `seq` applied. Once it has opened, the browser itself
   * reconnects after a drop (with Last-Event-ID, so nothing is missed or repeated); when it gives up (an answer
   * that is no stream: 404, 429, 503) or never opened, a new one is made with backoff, or after
   * `maxFailedOpens` that never opened, polling.
   */
  _stream(watch) {
    const url = new URL(`${this.apiUrl}/api/jobs/${encodeURIComponent(watch.jobId)}/stream`);
    if (watch.lastSeq >= 0) url.searchParams.set("lastEventId", String(watch.lastSeq));
    let opened = false;
    const source = new this.EventSource(url.href);
    watch.source = source;
    this._set({ connection: watch.attempts ? "reconnecting" : "connecting" });
    source.onopen = () => {
      opened = true;
      watch.failedOpens = 0;
      this._set({ connection: "live" });
    };
    source.onmessage = (event) => this._onStreamEvent(watch, event.data);
    source.onerror = () => {
      // never opened (refused, cut, no stream): a failed open; open and dropped: the browser reconnects by itself
      if (!opened || source.readyState === source.CLOSED) return this._streamGone(watch, source, opened);
      if (!watch.ended) this._set({ connection: "reconnecting" });
    };
  }

  _onStreamEvent(watch, data) {
    let frame;
    try {
      frame = JSON.parse(data);
    } catch {
      return;
    }
    if (frame.jobId !== watch.jobId || !JOB_FRAMES.has(frame.type)) return;
    watch.attempts = 0;
    this._apply(watch, frame);
  }

  _streamGone(watch, source, opened) {
    if (watch.source !== source) return;
    watch.source = null;
    source.onopen = source.onmessage = source.onerror = null;
    source.close();
    if (watch.ended) return;
    if (!opened && ++watch.failedOpens >= this.maxFailedOpens) return this._poll(watch);
    this._set({ connection: "reconnecting" });
    watch.timer = setTimeout(() => watch.ended || this._stream(watch), this._backoff(watch.attempts++));
  }

  // ---- following a job by polling GET /status ------------------------------------------------------

  async _poll(watch) {
    this._set({ connection: "polling" });
    const url = `${this.apiUrl}/api/jobs/${encodeURIComponent(watch.jobId)}/status`;
    while (!watch.ended) {
      try {
        const response = await fetch(url, { cache: "no-store" });
        const body = await response.json();
        if (response.ok) this._apply(watch, body);
        else if (response.status === 404) this._apply(watch, { status: "failed", error: body.error, code: body.code });
      } catch {
        // offline for a moment: the next poll tries again
      }
      if (!watch.ended) await sleep(this.pollIntervalMs);
    }
  }

  // ---- state ------------------------------------------------------------------------------------

  /** Apply an event or a status snapshot once (by `seq`), and tell the callbacks. */
  _apply(watch, update) {
    if (watch.ended) return;
    if (typeof update.seq !== "number" || update.seq <= watch.lastSeq) {
      if ("queuePosition" in update) return this._applyPlace(watch, update);
    }
    if (typeof update.seq === "number") {
      if (update.seq <= watch.lastSeq) return; // already applied: a catch-up may repeat what polling saw
      watch.lastSeq = update.seq;
    }
    const { type, jobId, ...fields } = update;
    const job = placeOnlyIfTold({ ...this.state.currentJob, ...fields, jobId: watch.jobId }, fields);
    if (job.status === "completed") job.progress = 100;
    this._set({ currentJob: job });
    const { onProgress, onCompleted, onFailed } = this.callbacks;
    if (!ENDED.has(job.status)) return onProgress?.(job);
    this._finish(watch);
    if (job.status === "completed") {
      this._set({ isGenerating: false, connection: "idle" });
      onCompleted?.(job.result, job);
      return;
    }
    const failure = job.status === "cancelled"
      ? { error: "The job was cancelled.", code: "cancelled", jobId: job.jobId }
      : { error: job.error || "The picture could not be made.", code: job.code || job.errorCode || "failed", jobId: job.jobId };
    this._set({ isGenerating: false, connection: "idle", error: failure.error, errorCode: failure.code });
    onFailed?.(failure);
  }

  /**
   * A queued job's new place in line. It is no event: the server sends it over /ws without a `seq` (right
   * after the event it belongs to), and polling reads it in status answers whose `seq` was already applied.
   */
  _applyPlace(watch, update) {
    const job = this.state.currentJob;
    if (watch.ended || !job || job.status !== "queued" || update.status !== "queued") return;
    if (typeof update.seq === "number" && update.seq !== watch.lastSeq) return; // about an older state
    if (job.queuePosition === update.queuePosition && job.etaSeconds === update.etaSeconds) return;
    const placed = { ...job, queuePosition: update.queuePosition ?? null, etaSeconds: update.etaSeconds ?? null };
    this._set({ currentJob: placed });
    this.callbacks.onProgress?.(placed);
  }

  /** Stop every timer and socket of `watch` and resolve its promise. */
  _finish(watch) {
    if (watch.ended) return;
    watch.ended = true;
    clearTimeout(watch.timer);
    clearInterval(watch.heartbeat);
    const socket = watch.socket;
    watch.socket = null;
    if (socket) {
      socket.onclose = socket.onmessage = socket.onopen = null;
      socket.close(1000);
    }
    this._closeStream(watch);
    if (this.watch === watch) this.watch = null;
    watch.resolve(this.state.currentJob);
  }

  _closeStream(watch) {
    const source = watch.source;
    watch.source = null;
    if (source) {
      source.onopen = source.onmessage = source.onerror = null;
      source.close();
    }
  }

  _set(changes) {
    this.state = Object.freeze({ ...this.state, ...changes });
    this.callbacks.onChange?.(this.state);
    for (const listener of this.listeners) listener();
  }
}

/** A place in line holds only for the state it was told with: an event that does not carry one drops it. */
function placeOnlyIfTold(job, fields) {
  if (!("queuePosition" in fields) || job.status !== "queued") {
    delete job.queuePosition;
    delete job.etaSeconds;
  }
  return job;
}

/**
 * Say a queued job's place as a person would: "3rd in line, about 40 s" (or "3rd in line" without an estimate).
 * @param {Job} job
 * @returns {string} "" when the job is not queued or has no place in line
 */
export function describePlace(job) {
  const position = job?.status === "queued" ? job.queuePosition : null;
  if (!position) return "";
  const tens = position % 100;
  const suffix = tens >= 11 && tens <= 13 ? "th" : ({ 1: "st", 2: "nd", 3: "rd" }[position % 10] || "th");
  const place = position === 1 ? "Next in line" : `${position}${suffix} in line`;
  const eta = job.etaSeconds;
  if (!eta) return place;
  return `${place}, about ${eta < 90 ? `${Math.max(5, Math.round(eta / 5) * 5)} s` : `${Math.round(eta / 60)} min`}`;
}

/**
 * Shorthand for `new ImageGeneration(options)`.
 * @param {ConstructorParameters<typeof ImageGeneration>[0]} [options]
 * @returns {ImageGeneration}
 */
export function createImageGeneration(options) {
  return new ImageGeneration(options);
}
