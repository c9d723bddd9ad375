// The fedrun dashboard: a read-only view of the live server through the local proxy
// (`fedrun dashboard`). Every string that came from the server (job names, site names,
// reasons, ids) reaches the page through textContent or createTextNode, never as HTML.
'use strict';

const POLL_MS = 2000;
const PAGE_SIZE = 100;
const SVG_NS = 'http://www.w3.org/2000/svg';

const view = {
  jobs: [],
  sites: [],
  page: 0,
  selected: null, // job id
  job: null, // the selected job's /v1/jobs/{id} answer
  events: [], // the selected job's events, oldest first
  nextSeq: 1, // where the next history read of the selected job starts
  audit: null,
  auditError: null,
  renders: 0,
};

// ----- small DOM helpers -------------------------------------------------------------

/** An element with attributes and children; string children become text nodes. */
function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value !== undefined && value !== null) node.setAttribute(key, String(value));
  }
  for (const child of children) {
    if (child === null || child === undefined) continue;
    node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
  }
  return node;
}

/** An SVG element; text goes in with textContent only. */
function svg(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

function $(id) {
  return document.getElementById(id);
}

function shortId(id) {
  return String(id).slice(0, 8);
}

/** The CSS class of a status string (the status itself is shown as text). */
function statusClass(status) {
  switch (status) {
    case 'SUBMITTED': return 's-queued';
    case 'DISPATCHED': return 's-dispatched';
    case 'RUNNING': return 's-running';
    case 'FINISHED:COMPLETED': return 's-completed';
    default: return String(status).startsWith('FINISHED:') ? 's-failed' : 's-queued';
  }
}

function statusBadge(status) {
  return el('span', { class: 'status ' + statusClass(status) }, String(status));
}

/** `12:34:56.789` of an ISO-8601 time (the whole time is the cell's title). */
function timeOfDay(iso) {
  const match = /T(\d\d:\d\d:\d\d(?:\.\d+)?)/.exec(String(iso));
  return match ? match[1] : String(iso);
}

function clock(ms) {
  return new Date(ms).toISOString().replace('T', ' ').replace(/\.\d+Z$/, 'Z');
}

// ----- talking to the proxy ----------------------------------------------------------

async function getJson(path) {
  const response = await fetch(path, { cache: 'no-store' });
  const text = await response.text();
  if (!response.ok) {
    let message = text;
    try { message = JSON.parse(text).message || text; } catch (_) { /* not JSON */ }
    throw new Error(`${path}: ${response.status} ${message}`);
  }
  return JSON.parse(text);
}

async function getLines(path) {
  const response = await fetch(path, { cache: 'no-store' });
  const text = await response.text();
  if (!response.ok) throw new Error(`${path}: ${response.status} ${text}`);
  return text.split('\n').filter((line) => line.trim() !== '').map((line) => JSON.parse(line));
}

function setConnection(ok, text) {
  const node = $('connection');
  node.className = 'connection ' + (ok ? 'ok' : 'error');
  node.textContent = text;
}

// ----- jobs --------------------------------------------------------------------------

function filteredJobs() {
  const name = $('filter-name').value.trim().toLowerCase();
  const status = $('filter-status').value;
  return view.jobs.filter((job) =>
    (name === '' || String(job.name).toLowerCase().includes(name)) &&
    (status === '' || job.status === status || (status === 'FINISHED' && String(job.status).startsWith('FINISHED:'))));
}

function renderStatusChoices() {
  const choice = $('filter-status');
  const current = choice.value;
  const seen = new Set(view.jobs.map((job) => String(job.status)));
  if (current !== '' && current !== 'FINISHED') seen.add(current);
  const wanted = ['', ...[...seen].sort()];
  if ([...seen].some((s) => s.startsWith('FINISHED:')) || current === 'FINISHED') wanted.splice(1, 0, 'FINISHED');
  const have = [...choice.options].map((o) => o.value);
  if (have.length === wanted.length && have.every((v, i) => v === wanted[i])) return;
  choice.replaceChildren(...wanted.map((value) => el('option', { value }, value === '' ? 'all' : value)));
  choice.value = current;
}

/** Draws one page of the (filtered) jobs: at most PAGE_SIZE rows are in the DOM. */
function renderJobs() {
  renderStatusChoices();
  const jobs = filteredJobs();
  const pages = Math.max(1, Math.ceil(jobs.length / PAGE_SIZE));
  view.page = Math.min(view.page, pages - 1);
  const first = view.page * PAGE_SIZE;
  const rows = jobs.slice(first, first + PAGE_SIZE).map((job) => {
    const row = el('tr', {
      class: 'job-row' + (job.job_id === view.selected ? ' selected' : ''),
      'data-job-id': job.job_id,
      'data-status': job.status,
    },
    el('td', { class: 'id', title: job.job_id }, shortId(job.job_id)),
    el('td', { class: 'name' }, String(job.name)),
    el('td', { class: 'status-cell' }, statusBadge(job.status)),
    el('td', { class: 'mono', title: String(job.submit_time_iso) }, String(job.submit_time_iso).replace('T', ' ')),
    el('td', { class: 'mono' }, job.duration ? String(job.duration) : '–'));
    row.addEventListener('click', () => select(job.job_id));
    return row;
  });
  if (rows.length === 0) {
    rows.push(el('tr', {}, el('td', { colspan: 5, class: 'empty' },
      view.jobs.length === 0 ? 'no jobs yet' : 'no job matches the filter')));
  }
  $('job-rows').replaceChildren(...rows);
  const shown = jobs.length === 0 ? '0' : `${first + 1}–${Math.min(first + PAGE_SIZE, jobs.length)}`;
  $('page-info').textContent =
    `${shown} of ${jobs.length}` + (jobs.length !== view.jobs.length ? ` (of ${view.jobs.length} jobs)` : '');
  $('page-prev').disabled = view.page === 0;
  $('page-next').disabled = view.page >= pages - 1;
}

// ----- sites -------------------------------------------------------------------------

function renderSites() {
  const rows = view.sites.map((site) => {
    const resources = Object.entries(site.resources || {}).map(([k, v]) => `${k}=${v}`).join(', ');
    const running = el('td', { class: 'mono' });
    if ((site.running || []).length === 0) running.appendChild(document.createTextNode('none'));
    for (const id of site.running || []) {
      const link = el('a', { href: '#job=' + encodeURIComponent(id), title: id }, shortId(id));
      running.appendChild(link);
      running.appendChild(document.createTextNode(' '));
    }
    return el('tr', { class: 'site-row', 'data-site': site.name },
      el('td', {}, String(site.name)),
      el('td', { class: 'mono' }, String(site.connected_since)),
      el('td', { class: 'mono' }, resources || '–'),
      running);
  });
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 4, class: 'empty' }, 'no site connected')));
  $('site-rows').replaceChildren(...rows);
}

// ----- one job: facts, events, chain, timeline ---------------------------------------

// The address's fragment holds the chosen job and the filters (`#job=ID&status=RUNNING`),
// so a view can be bookmarked or opened directly.
function hashParams() {
  return new URLSearchParams(location.hash.replace(/^#/, ''));
}

function select(id) {
  const params = hashParams();
  if (params.get('job') === id) return;
  params.set('job', id);
  location.hash = params.toString();
}

function selectedFromHash() {
  return hashParams().get('job');
}

async function onHash() {
  const id = selectedFromHash();
  if (id === view.selected) return;
  view.selected = id;
  view.job = null;
  view.events = [];
  view.nextSeq = 1;
  renderJobs();
  renderJob();
  if (id) await refreshJob().catch(showError);
}

async function refreshJob() {
  const id = view.selected;
  if (!id) return;
  const job = await getJson('/v1/jobs/' + encodeURIComponent(id));
  const fresh = await getLines(`/v1/history?job=${encodeURIComponent(job.job_id)}&from=${view.nextSeq}`);
  if (view.selected !== id) return; // another job was chosen meanwhile
  view.job = job;
  for (const event of fresh) {
    if (event.seq >= view.nextSeq) {
      view.events.push(event);
      view.nextSeq = event.seq + 1;
    }
  }
  renderJob();
}

async function refreshAudit() {
  try {
    view.audit = await getJson('/v1/audit');
    view.auditError = null;
  } catch (err) {
    view.audit = null;
    view.auditError = String(err.message || err);
  }
  renderChain();
  renderEvents();
}

function renderChain() {
  const node = $('chain');
  if (view.auditError) {
    node.className = 'chain-bad';
    node.textContent = 'the check could not run: ' + view.auditError;
    return;
  }
  const audit = view.audit;
  if (!audit) { node.className = ''; node.textContent = 'checking…'; return; }
  if (audit.ok) {
    node.className = 'chain-ok';
    node.textContent = `chain intact: ${audit.records_ok} records checked` +
      (audit.anchor_matches ? ', anchor matches' : '') +
      (audit.snapshot_seq ? `, snapshot at ${audit.snapshot_seq} matches` : '') +
      `, ${audit.blobs_checked} blobs checked`;
  } else {
    node.className = 'chain-bad';
    const problems = (audit.problems || []).map((p) => (typeof p === 'string' ? p : JSON.stringify(p)));
    node.textContent = `chain broken at seq ${audit.first_bad_seq}: ${problems.join('; ')}`;
  }
  node.setAttribute('data-ok', audit.ok ? 'true' : 'false');
}

/** An event's own fields as `key=value`, without the ones every event has. */
function eventDetail(event) {
  const kind = event.kind || {};
  const parts = [];
  for (const [key, value] of Object.entries(kind)) {
    if (key === 'type' || key === 'job_id' || key === 'meta' || key === 'submitter' || key === 'signer' || value === null) continue;
    parts.push(`${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`);
  }
  if (event.type === 'job_submitted' && kind.meta) parts.unshift(`name=${kind.meta.name}`);
  return parts.join('  ');
}

/** Whether the last audit vouches for an event: inside the checked records, no problem. */
function chainMark(event) {
  const audit = view.audit;
  if (!audit) return '…';
  if (audit.first_bad_seq !== null && audit.first_bad_seq !== undefined && event.seq >= audit.first_bad_seq) return '✗';
  return event.seq <= audit.records_ok ? '✓' : 'not yet checked';
}

function renderEvents() {
  const rows = view.events.map((event) =>
    el('tr', { class: 'event-row', 'data-seq': event.seq, 'data-type': event.type },
      el('td', { class: 'mono' }, String(event.seq)),
      el('td', { class: 'mono', title: String(event.at) }, timeOfDay(event.at)),
      el('td', {}, String(event.type)),
      el('td', { class: 'mono detail' }, eventDetail(event)),
      el('td', {}, chainMark(event))));
  if (rows.length === 0) rows.push(el('tr', {}, el('td', { colspan: 5, class: 'empty' }, view.selected ? 'loading…' : '')));
  $('event-rows').replaceChildren(...rows);
}

function renderJob() {
  const job = view.job;
  $('job-title').textContent = job ? `Job ${job.name}` : view.selected ? 'Loading job…' : 'Select a job';
  const facts = $('job-facts');
  facts.replaceChildren();
  if (job) {
    const add = (term, value) => { facts.appendChild(el('dt', {}, term)); facts.appendChild(el('dd', {}, value)); };
    add('id', String(job.job_id));
    add('status', statusBadge(job.status));
    if (job.finish_reason) add('reason', String(job.finish_reason));
    add('submitter', `${job.submitter_name} (${job.submitter_org}, ${job.submitter_role})`);
    add('sites', (job.job_clients || []).join(', ') || '–');
    add('run', String(job.run));
  }
  renderTimeline();
  renderEvents();
}

/**
 * The phases of a job, from its events: queued (submit to dispatch), dispatched (the
 * dispatch to the first deploy answer), each participant's deploy and start, running
 * (run start to the first outcome), the outcome barrier (first outcome to the job's end)
 * and the archive. A phase that has not ended yet runs to `now`.
 */
function phases(events, now) {
  const bars = [];
  const first = (type) => events.find((e) => e.type === type);
  const submitted = first('job_submitted');
  if (!submitted) return { bars, start: now, end: now, marks: [] };
  const finished = first('job_finished');
  const end = finished ? finished.at_ms : now;
  const dispatches = events.filter((e) => e.type === 'job_dispatched' || e.type === 'job_dispatch_extended');
  const dispatched = dispatches[0];
  bars.push({ lane: 'queued', cls: 'phase-queued', from: submitted.at_ms, to: dispatched ? dispatched.at_ms : end, open: !dispatched && !finished });
  const deploys = events.filter((e) => e.type === 'deploy_finished');
  const starts = events.filter((e) => e.type === 'start_finished');
  if (dispatched) {
    const firstAnswer = deploys[0];
    bars.push({ lane: 'dispatched', cls: 'phase-dispatched', from: dispatched.at_ms, to: firstAnswer ? firstAnswer.at_ms : dispatched.at_ms, open: false });
  }
  // When a participant was sent the job: the dispatch that named it (the server app is in
  // the first one).
  const sentAt = (participant) => {
    const named = dispatches.find((d) => (d.kind.sites || []).includes(participant));
    return named ? named.at_ms : dispatched ? dispatched.at_ms : submitted.at_ms;
  };
  const stepFailed = (event) => {
    const result = event.kind.result;
    const word = result && typeof result === 'object' ? result.result : result;
    return word !== undefined && word !== 'ok';
  };
  for (const deploy of deploys) {
    const who = String(deploy.kind.participant);
    bars.push({ lane: `deploy ${who}`, cls: 'phase-deploy' + (stepFailed(deploy) ? ' failed' : ''), from: sentAt(who), to: deploy.at_ms, open: false });
  }
  for (const start of starts) {
    const who = String(start.kind.participant);
    const deployed = deploys.find((d) => d.kind.participant === start.kind.participant);
    bars.push({ lane: `start ${who}`, cls: 'phase-start' + (stepFailed(start) ? ' failed' : ''), from: deployed ? deployed.at_ms : sentAt(who), to: start.at_ms, open: false });
  }
  const running = first('run_started');
  const outcomes = events.filter((e) => e.type === 'server_app_exited' || e.type === 'site_outcome_reported' || e.type === 'site_report_lapsed' || e.type === 'run_stopped');
  if (running) {
    const firstOutcome = outcomes.find((e) => e.seq > running.seq);
    bars.push({ lane: 'running', cls: 'phase-running', from: running.at_ms, to: firstOutcome ? firstOutcome.at_ms : end, open: !firstOutcome && !finished });
    if (firstOutcome) {
      bars.push({ lane: 'outcome barrier', cls: 'phase-barrier', from: firstOutcome.at_ms, to: end, open: !finished });
    }
  }
  const archiveStart = first('workspace_archive_started');
  if (archiveStart) {
    const archived = events.find((e) => e.type === 'workspace_archived' || e.type === 'workspace_archive_failed');
    bars.push({ lane: 'archive', cls: 'phase-archive' + (archived && archived.type === 'workspace_archive_failed' ? ' failed' : ''), from: archiveStart.at_ms, to: archived ? archived.at_ms : now, open: !archived });
  }
  const last = Math.max(end, ...bars.map((b) => b.to));
  const marks = finished ? [{ at: finished.at_ms, label: String(finished.kind.status) }] : [];
  return { bars, start: submitted.at_ms, end: last, marks };
}

function renderTimeline() {
  const box = $('timeline-box');
  if (!view.job || view.events.length === 0) { box.replaceChildren(); return; }
  const newest = view.events[view.events.length - 1].at_ms;
  const { bars, start, end, marks } = phases(view.events, Math.max(Date.now(), newest));
  const labelWidth = 150;
  const width = 760;
  const lane = 22;
  const top = 8;
  const height = top + bars.length * lane + 26;
  const span = Math.max(end - start, 1);
  const x = (ms) => labelWidth + ((ms - start) / span) * (width - labelWidth - 12);
  const chart = svg('svg', { id: 'timeline', viewBox: `0 0 ${width} ${height}`, role: 'img', 'data-bars': bars.length });
  chart.appendChild(svg('title', {}, `timeline of job ${view.job.name}`));
  const ticks = 5;
  for (let i = 0; i <= ticks; i += 1) {
    const at = start + (span * i) / ticks;
    chart.appendChild(svg('line', { class: 'grid', x1: x(at), x2: x(at), y1: top, y2: height - 20 }));
    chart.appendChild(svg('text', { class: 'axis', x: x(at), y: height - 6, 'text-anchor': 'middle' }, `${((at - start) / 1000).toFixed(span < 10000 ? 1 : 0)} s`));
  }
  bars.forEach((bar, i) => {
    const y = top + i * lane;
    chart.appendChild(svg('text', { x: 4, y: y + 15, class: 'lane' }, bar.lane));
    const x1 = x(bar.from);
    const w = Math.max(x(bar.to) - x1, 2);
    const rect = svg('rect', {
      class: 'bar ' + bar.cls + (bar.open ? ' open' : ''),
      x: x1, y: y + 3, width: w, height: lane - 6, 'data-lane': bar.lane,
    });
    rect.appendChild(svg('title', {}, `${bar.lane}: ${((bar.to - bar.from) / 1000).toFixed(3)} s${bar.open ? ' so far' : ''}`));
    chart.appendChild(rect);
  });
  for (const mark of marks) {
    chart.appendChild(svg('line', { class: 'finish', x1: x(mark.at), x2: x(mark.at), y1: top, y2: height - 20 }));
  }
  box.replaceChildren(chart);
}

// ----- the loop ----------------------------------------------------------------------

function showError(err) {
  setConnection(false, String(err.message || err));
}

async function poll() {
  const started = performance.now();
  try {
    const [jobs, sites] = await Promise.all([getJson('/v1/jobs'), getJson('/v1/sites')]);
    view.jobs = jobs;
    view.sites = sites;
    renderJobs();
    renderSites();
    if (view.selected) await refreshJob();
    view.renders += 1;
    document.body.setAttribute('data-renders', String(view.renders));
    setConnection(true, `live · ${jobs.length} jobs · ${sites.length} sites · updated ${clock(Date.now())}`);
  } catch (err) {
    showError(err);
  } finally {
    // A large federation is polled less often: at most a fifth of the time goes to it.
    setTimeout(poll, Math.max(POLL_MS, 5 * (performance.now() - started)));
  }
}

function start() {
  $('filter-name').addEventListener('input', () => { view.page = 0; renderJobs(); });
  $('filter-status').addEventListener('change', () => { view.page = 0; renderJobs(); });
  $('page-prev').addEventListener('click', () => { view.page = Math.max(0, view.page - 1); renderJobs(); });
  $('page-next').addEventListener('click', () => { view.page += 1; renderJobs(); });
  $('chain-again').addEventListener('click', () => { view.audit = null; renderChain(); refreshAudit(); });
  window.addEventListener('hashchange', () => { onHash(); });
  const params = hashParams();
  if (params.has('name')) $('filter-name').value = params.get('name');
  if (params.has('status')) {
    // The choice exists before the first answer, so the filter applies at once.
    const status = params.get('status');
    $('filter-status').appendChild(el('option', { value: status }, status));
    $('filter-status').value = status;
  }
  view.selected = selectedFromHash();
  renderJob();
  refreshAudit();
  poll();
}

start();
