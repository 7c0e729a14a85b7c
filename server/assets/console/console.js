// The fleetops operators' console: a small client-side router (the part of the URL after
// `#`) over the JSON API under /api/v1. No framework and no build step: this file is served
// as it is, from the binary.
//
// Safety: every value shown is set as text (`textContent`, `append` of strings) or as an
// attribute through `h()`; the page never parses markup built from data, so thing names,
// documents and device details cannot inject anything. The server's Content-Security-Policy
// allows only this origin's scripts, and no inline script or style.
//
// The API token is kept in sessionStorage (gone when the tab closes) and sent as
// `Authorization: Bearer` on every call; a 401 sends the operator back to the login page.
'use strict';

(() => {
  const TOKEN_KEY = 'fleetops.apiToken';
  // The job and execution pages poll every second; lists every two.
  const POLL_MS = 1000;
  const LIST_POLL_MS = 2000;
  const PAGE_SIZE = 25;

  const JOB_STATUSES = ['SCHEDULED', 'IN_PROGRESS', 'COMPLETED', 'CANCELED'];
  const EXECUTION_STATUSES = ['QUEUED', 'IN_PROGRESS', 'SUCCEEDED', 'FAILED', 'REJECTED',
    'TIMED_OUT', 'CANCELED', 'REMOVED'];
  const COMMAND_STATUSES = ['SENT', 'SUCCEEDED', 'FAILED', 'REJECTED', 'TIMED_OUT', 'CANCELED'];
  // jobProcessDetails' counters in the order the progress bars stack them: done first.
  const COUNTERS = [
    ['SUCCEEDED', 'numberOfSucceededThings'], ['FAILED', 'numberOfFailedThings'],
    ['REJECTED', 'numberOfRejectedThings'], ['TIMED_OUT', 'numberOfTimedOutThings'],
    ['CANCELED', 'numberOfCanceledThings'], ['REMOVED', 'numberOfRemovedThings'],
    ['IN_PROGRESS', 'numberOfInProgressThings'], ['QUEUED', 'numberOfQueuedThings'],
  ];

  const main = document.getElementById('main');
  const logoutButton = document.getElementById('logout');

  // ---- DOM ---------------------------------------------------------------------------------

  // An element with attributes (`on…` become listeners) and children (strings become text).
  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key.startsWith('on')) el.addEventListener(key.slice(2), value);
      else if (key === 'class') el.className = value;
      else el.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child === undefined || child === null || child === false) continue;
      el.append(child instanceof Node ? child : String(child));
    }
    return el;
  }

  const enc = encodeURIComponent;
  const jobHref = (job) => `#/jobs/${enc(job)}`;
  const executionHref = (job, thing) => `#/jobs/${enc(job)}/things/${enc(thing)}`;
  const thingHref = (thing) => `#/things/${enc(thing)}`;
  const groupHref = (group) => `#/groups/${enc(group)}`;
  const commandHref = (id) => `#/commands/${enc(id)}`;
  const link = (href, text) => h('a', { href }, text);

  function badge(status) {
    return h('span', { class: `badge s-${String(status).toLowerCase()}`, 'data-status': status },
      status);
  }

  // Epoch seconds (the API's times), epoch milliseconds or an RFC 3339 string, in UTC.
  function fmtTime(value) {
    if (value === undefined || value === null || value === '') return '—';
    let date;
    if (typeof value === 'number') date = new Date(value > 1e11 ? value : value * 1000);
    else date = new Date(value);
    if (Number.isNaN(date.getTime())) return String(value);
    const iso = date.toISOString().replace('T', ' ');
    return (iso.endsWith('.000Z') ? iso.slice(0, 19) : iso.slice(0, 23)) + ' UTC';
  }

  const pretty = (value) => h('pre', {}, JSON.stringify(value, null, 2));

  function compact(value, max) {
    const text = JSON.stringify(value);
    return text.length > max ? `${text.slice(0, max - 1)}…` : text;
  }

  function definitions(rows) {
    return h('dl', {}, rows.filter(Boolean).map(([term, value, key]) =>
      [h('dt', {}, term), h('dd', key ? { 'data-field': key } : {}, value)]));
  }

  function card(title, ...children) {
    return h('section', { class: 'card' }, title ? h('h2', {}, title) : null, children);
  }

  function select(id, label, values, allLabel) {
    const el = h('select', { id },
      h('option', { value: '' }, allLabel),
      values.map((v) => h('option', { value: v }, v)));
    return { el, wrap: h('label', { for: id }, label, el) };
  }

  // ---- API ---------------------------------------------------------------------------------

  class ApiError extends Error {
    constructor(status, body) {
      const message = body && body.message
        ? `${status} ${body.code || ''}: ${body.message}` : `HTTP ${status}`;
      super(message);
      this.status = status;
      this.code = body && body.code;
      this.serverMessage = (body && body.message) || '';
    }
  }

  const token = () => sessionStorage.getItem(TOKEN_KEY);
  let loginReason = '';
  let afterLogin = '#/jobs';

  function withQuery(path, params) {
    const query = new URLSearchParams();
    for (const [key, value] of Object.entries(params || {})) {
      if (value !== undefined && value !== null && value !== '') query.set(key, String(value));
    }
    const text = query.toString();
    return text ? `${path}?${text}` : path;
  }

  async function api(method, path, body) {
    const headers = { Accept: 'application/json', Authorization: `Bearer ${token() || ''}` };
    const init = { method, headers, cache: 'no-store' };
    if (body !== undefined) {
      headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const res = await fetch(path, init);
    const text = await res.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch (_) { data = { message: text }; }
    }
    if (res.status === 401) {
      logout(`The server refused the token: ${(data && data.message) || 'HTTP 401'}. ` +
        'Log in again.');
      throw new ApiError(401, data);
    }
    if (!res.ok) throw new ApiError(res.status, data);
    return data;
  }

  // ---- views: lifecycle --------------------------------------------------------------------

  // Bumped on every navigation: work started for an older page stops or is dropped.
  let generation = 0;
  const isCurrent = (gen) => gen === generation;

  function errorBox() {
    return h('div', { class: 'error', role: 'alert', hidden: true });
  }

  function showError(box, error) {
    // A 401 is already on its way to the login page.
    if (error instanceof ApiError && error.status === 401) return;
    box.hidden = false;
    box.textContent = error && error.message ? error.message : String(error);
  }

  function clearError(box) {
    box.hidden = true;
    box.textContent = '';
  }

  // Runs `fn` now and then every `ms` after it finishes, while this page is shown.
  function poll(ms, fn, box) {
    const gen = generation;
    const tick = async () => {
      if (!isCurrent(gen)) return;
      try {
        await fn();
        if (isCurrent(gen) && box) clearError(box);
      } catch (error) {
        if (isCurrent(gen) && box) showError(box, error);
      }
      if (isCurrent(gen)) setTimeout(tick, ms);
    };
    tick();
  }

  // Runs `refresh` at once (a filter changed), showing a failure in `box`.
  function now(refresh, box) {
    refresh().catch((error) => showError(box, error));
  }

  // Calls of the returned function answer only if no later call started meanwhile, so a slow
  // poll never overwrites what a newer filter or page asked for.
  function latest(fn) {
    let seq = 0;
    const gen = generation;
    return async (...args) => {
      const mine = ++seq;
      const result = await fn(...args);
      return mine === seq && isCurrent(gen) ? { fresh: true, result } : { fresh: false };
    };
  }

  // Previous/next over `nextToken` pages; remembers the tokens of the pages seen.
  function pager(onChange) {
    const tokens = [undefined];
    let index = 0;
    let next;
    const prev = h('button', { type: 'button', class: 'secondary', disabled: true,
      onclick: () => { if (index > 0) { index -= 1; onChange(); } } }, '← Previous');
    const forward = h('button', { type: 'button', class: 'secondary', disabled: true,
      onclick: () => {
        if (!next) return;
        tokens.length = index + 1;
        tokens.push(next);
        index += 1;
        onChange();
      } }, 'Next →');
    const where = h('span', {}, 'page 1');
    return {
      el: h('div', { class: 'pager' }, prev, forward, where),
      token: () => tokens[index],
      reset() { tokens.length = 1; index = 0; next = undefined; },
      update(nextToken) {
        next = nextToken;
        prev.disabled = index === 0;
        forward.disabled = !nextToken;
        where.textContent = `page ${index + 1}`;
      },
    };
  }

  function table(columns, id) {
    const body = h('tbody', id ? { id } : {});
    const el = h('table', {}, h('thead', {}, h('tr', {}, columns.map((c) =>
      h('th', c.startsWith('#') ? { class: 'num' } : {}, c.replace(/^#/, ''))))), body);
    return { el, body };
  }

  function emptyRow(body, columns, text) {
    body.replaceChildren(h('tr', {}, h('td', { colspan: columns, class: 'muted' }, text)));
  }

  // ---- progress ----------------------------------------------------------------------------

  function progressBar(details, remaining, big) {
    const parts = COUNTERS.map(([status, key]) => [status, Number(details && details[key]) || 0]);
    if (remaining > 0) parts.push(['REMAINING', remaining]);
    const label = parts.filter(([, n]) => n > 0).map(([s, n]) => `${s} ${n}`).join(', ') ||
      'no executions yet';
    const bar = h('div', { class: big ? 'bar big' : 'bar', role: 'img', 'aria-label': label,
      title: label });
    for (const [status, n] of parts) {
      if (n <= 0) continue;
      const seg = h('span', { class: `seg s-${status.toLowerCase()}`, 'data-status': status });
      // CSSOM, not a style attribute: the CSP forbids inline style attributes.
      seg.style.flexGrow = String(n);
      bar.append(seg);
    }
    return bar;
  }

  function legend(details, remaining) {
    const item = (status, text, n) => h('span', { 'data-counter': status },
      h('span', { class: `swatch s-${status.toLowerCase()}` }), `${text} `, h('strong', {}, n));
    return h('div', { class: 'legend' },
      COUNTERS.map(([status, key]) => item(status, status.replace('_', ' ').toLowerCase(),
        String(Number(details && details[key]) || 0))),
      remaining === undefined ? null : item('REMAINING', 'not yet queued', String(remaining)));
  }

  // ---- login -------------------------------------------------------------------------------

  function logout(reason) {
    sessionStorage.removeItem(TOKEN_KEY);
    loginReason = reason || '';
    go('#/login');
  }

  function go(hash) {
    if (location.hash === hash) render();
    else location.hash = hash;
  }

  function viewLogin() {
    const box = errorBox();
    if (loginReason) showError(box, new Error(loginReason));
    loginReason = '';
    const input = h('input', { id: 'token', name: 'token', type: 'password', required: true,
      autocomplete: 'current-password', placeholder: 'the API token of this server' });
    const submit = h('button', { type: 'submit', id: 'login' }, 'Log in');
    const form = h('form', { class: 'stack', onsubmit: async (event) => {
      event.preventDefault();
      const candidate = input.value.trim();
      if (!candidate) return;
      submit.disabled = true;
      try {
        const res = await fetch('/api/v1/jobs?limit=1',
          { headers: { Authorization: `Bearer ${candidate}` }, cache: 'no-store' });
        if (res.status === 401) throw new Error('The server refused this token.');
        if (!res.ok) throw new Error(`The server answered HTTP ${res.status}; try again.`);
        sessionStorage.setItem(TOKEN_KEY, candidate);
        go(afterLogin);
      } catch (error) {
        showError(box, error);
      } finally {
        submit.disabled = false;
      }
    } }, h('label', { for: 'token' }, 'API token'), input,
    h('div', { class: 'actions' }, submit));
    main.append(h('div', { class: 'login' }, card('Log in',
      h('p', { class: 'hint' }, 'Paste the API token the server was started with ',
        '(FLEETOPS_API_TOKEN). It is kept in this tab only and sent with every API call.'),
      box, form)));
    input.focus();
  }

  // ---- jobs --------------------------------------------------------------------------------

  function namesOf(text) {
    return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
  }

  function createJobForm() {
    const box = errorBox();
    const id = h('input', { id: 'job-id', name: 'jobId', placeholder: 'generated when empty',
      pattern: '[a-zA-Z0-9_\\-]{1,64}' });
    const things = h('input', { id: 'job-things', name: 'things',
      placeholder: 'lamp-1, lamp-2' });
    const groups = h('input', { id: 'job-groups', name: 'groups', placeholder: 'optional' });
    const selection = h('select', { id: 'job-selection', name: 'targetSelection' },
      h('option', { value: 'SNAPSHOT' }, 'SNAPSHOT: the targets as they are now'),
      h('option', { value: 'CONTINUOUS' }, 'CONTINUOUS: and things that join a target group'));
    const documentField = h('textarea', { id: 'job-document', name: 'document', rows: 4 });
    documentField.value = '{\n  "operation": "update"\n}';
    const rollout = h('input', { id: 'job-rollout', name: 'rollout', type: 'number', min: 1,
      placeholder: 'unlimited' });
    const description = h('input', { id: 'job-description', name: 'description',
      placeholder: 'optional' });
    const jobName = h('input', { id: 'job-name', name: 'name', placeholder: 'optional',
      maxlength: 128 });
    const submit = h('button', { type: 'submit', id: 'create-job' }, 'Create job');
    const form = h('form', { class: 'stack', id: 'create-job-form', onsubmit: async (event) => {
      event.preventDefault();
      clearError(box);
      let document;
      try {
        document = JSON.parse(documentField.value);
      } catch (error) {
        showError(box, new Error(`The document is not JSON: ${error.message}`));
        return;
      }
      const body = {
        targets: { thingNames: namesOf(things.value), thingGroupNames: namesOf(groups.value) },
        targetSelection: selection.value,
        document,
      };
      if (id.value.trim()) body.jobId = id.value.trim();
      if (description.value.trim()) body.description = description.value.trim();
      if (jobName.value.trim()) body.name = jobName.value.trim();
      if (rollout.value) {
        body.jobExecutionsRolloutConfig = { maximumPerMinute: Number(rollout.value) };
      }
      submit.disabled = true;
      try {
        const created = await api('POST', '/api/v1/jobs', body);
        go(jobHref(created.jobId));
      } catch (error) {
        showError(box, error);
      } finally {
        submit.disabled = false;
      }
    } },
    h('label', { for: 'job-id' }, 'Job id'), id,
    h('label', { for: 'job-name' }, 'Name'), jobName,
    h('label', { for: 'job-things' }, 'Target things'), things,
    h('label', { for: 'job-groups' }, 'Target groups'), groups,
    h('label', { for: 'job-selection' }, 'Selection'), selection,
    h('label', { for: 'job-document' }, 'Document (JSON)'), documentField,
    h('label', { for: 'job-rollout' }, 'Rollout per minute'), rollout,
    h('label', { for: 'job-description' }, 'Description'), description,
    h('div', { class: 'actions' }, submit));
    // Folded by default: the list is what an operator looks at most.
    return h('details', { class: 'card', id: 'create-job-card' },
      h('summary', { id: 'create-job-toggle' }, 'Create job'), box, form);
  }

  function viewJobs() {
    const box = errorBox();
    const status = select('jobs-status', 'Status', JOB_STATUSES, 'all');
    const type = select('jobs-type', 'Type', ['SNAPSHOT', 'CONTINUOUS'], 'all');
    const list = table(['Job', 'Name', 'Status', 'Type', 'Progress', '#Targets', 'Created'],
      'jobs');
    const pages = pager(() => refresh());
    const load = latest((nextToken) => api('GET', withQuery('/api/v1/jobs',
      { status: status.el.value, targetSelection: type.el.value, limit: PAGE_SIZE,
        nextToken })));
    async function refresh() {
      const { fresh, result } = await load(pages.token());
      if (!fresh) return;
      pages.update(result.nextToken);
      const rows = result.items;
      if (!rows.length) {
        emptyRow(list.body, 7, 'No jobs here.');
        return;
      }
      list.body.replaceChildren(...rows.map((j) => {
        const d = j.jobProcessDetails || {};
        return h('tr', { 'data-job': j.jobId },
          h('td', {}, link(jobHref(j.jobId), j.jobId)),
          h('td', { title: j.description || '' }, j.name || '—'),
          h('td', {}, badge(j.status), j.paused ? [' ', badge('PAUSED')] : null),
          h('td', {}, j.targetSelection),
          h('td', {}, progressBar(d)),
          h('td', { class: 'num' }, j.numberOfTargets),
          h('td', {}, fmtTime(j.createdAt)));
      }));
    }
    status.el.addEventListener('change', () => {
      pages.reset();
      now(refresh, box);
    });
    type.el.addEventListener('change', () => {
      pages.reset();
      now(refresh, box);
    });
    main.append(h('h1', {}, 'Jobs'), createJobForm(), card(null,
      h('div', { class: 'toolbar' }, status.wrap, type.wrap,
        h('span', { class: 'hint' }, 'The type is filtered in the browser, page by page.')),
      box, list.el, pages.el));
    poll(LIST_POLL_MS, refresh, box);
  }

  function describeRollout(r) {
    if (!r) return 'unlimited';
    const e = r.exponentialRate;
    if (!e) return `fixed: ${r.maximumPerMinute} per minute`;
    const c = e.rateIncreaseCriteria || {};
    const every = c.numberOfSucceededThings !== undefined
      ? `${c.numberOfSucceededThings} more succeeded things`
      : `${c.numberOfNotifiedThings} more notified things`;
    return `exponential: from ${e.baseRatePerMinute} per minute, ×${e.incrementFactor} every ` +
      `${every}, at most ${r.maximumPerMinute} per minute`;
  }

  function describeList(items, each, none) {
    if (!items || !items.length) return none;
    return h('ul', {}, items.map((i) => h('li', {}, each(i))));
  }

  function settingsCard(job) {
    const schedule = job.schedulingConfig;
    return card('Settings', definitions([
      ['Rollout', describeRollout(job.jobExecutionsRolloutConfig), 'rollout'],
      ['Abort', describeList(job.abortConfig && job.abortConfig.criteriaList,
        (c) => `${c.action} when ${c.failureType} reach ${c.thresholdPercentage}% once ` +
          `${c.minNumberOfExecutedThings} executions ended`, 'none'), 'abort'],
      ['Retry', describeList(job.jobExecutionsRetryConfig &&
        job.jobExecutionsRetryConfig.criteriaList,
      (c) => `${c.failureType}: up to ${c.numberOfRetries} more attempts`, 'none'), 'retry'],
      ['Timeout', job.timeoutConfig
        ? `${job.timeoutConfig.inProgressTimeoutInMinutes} min in progress at most` : 'none',
      'timeout'],
      ['Schedule', schedule ? definitions([
        ['start', fmtTime(schedule.startTime)],
        ['end', fmtTime(schedule.endTime)],
        ['at the end', schedule.jobEndBehavior || 'STOP_ROLLOUT'],
      ]) : 'none', 'schedule'],
    ]));
  }

  // Why a job is paused, in words.
  function pauseText(r) {
    switch (r.by) {
      case 'operator':
        return r.comment ? `by an operator: ${r.comment}` : 'by an operator';
      case 'stageGate':
        return `stage ${r.stage + 1} cannot pass its gate: ${r.succeeded} of ${r.size} ` +
          `succeeded, ${r.required} needed`;
      case 'stageErrorThreshold':
        return `stage ${r.stage + 1} crossed its error threshold: ${r.failed} of ` +
          `${r.executed} failed`;
      default:
        return compact(r, 200);
    }
  }

  // A staged job's stages: state, size, the successes its gate needs, and progress.
  function stagesCard(progress) {
    const list = table(['Stage', 'State', '#Things', 'Gate needs', 'Progress'], 'stages');
    list.body.replaceChildren(...(progress.stages || []).map((s) => h('tr',
      { 'data-stage': s.stage, class: s.stage === progress.currentStage ? 'current' : null },
      h('td', { class: 'num' }, s.stage + 1),
      h('td', {}, badge(s.state)),
      h('td', { class: 'num' }, s.numberOfThings),
      h('td', { class: 'num' }, s.requiredSucceededThings),
      h('td', {}, progressBar(s.jobProcessDetails || {})))));
    return card('Stages', list.el);
  }

  function viewJob(jobId) {
    const box = errorBox();
    const heading = h('h1', {}, 'Job ', h('span', { class: 'mono' }, jobId));
    const headBadge = h('span', { id: 'job-status' });
    heading.append(headBadge);
    const summary = h('div', { id: 'job-progress' });
    const info = h('div');
    const actionBox = errorBox();
    const cancel = (force) => async () => {
      const what = force
        ? `Force-cancel job ${jobId}? Executions in progress are canceled too.`
        : `Cancel job ${jobId}? Queued executions are canceled; those in progress finish.`;
      if (!window.confirm(what)) return;
      clearError(actionBox);
      try {
        await api('POST', `/api/v1/jobs/${enc(jobId)}/cancel`, { force });
        await refresh();
      } catch (error) {
        showError(actionBox, error);
      }
    };
    const cancelButton = h('button', { type: 'button', id: 'cancel-job', class: 'danger',
      onclick: cancel(false) }, 'Cancel');
    const forceButton = h('button', { type: 'button', id: 'force-cancel-job', class: 'danger',
      onclick: cancel(true) }, 'Force cancel');
    // Pause stops queueing; resume continues (past a failed stage gate, which it overrides).
    let paused = false;
    const pauseButton = h('button', { type: 'button', id: 'pause-job', onclick: async () => {
      clearError(actionBox);
      try {
        await api('POST', `/api/v1/jobs/${enc(jobId)}/${paused ? 'resume' : 'pause'}`, {});
        await refresh();
      } catch (error) {
        showError(actionBox, error);
      }
    } }, 'Pause');

    const status = select('executions-status', 'Status', EXECUTION_STATUSES, 'all');
    const list = table(['Thing', 'Status', '#Attempt', '#Version', 'Queued', 'Started',
      'Last update'], 'executions');
    const pages = pager(() => refresh());
    const loadJob = latest(() => api('GET', `/api/v1/jobs/${enc(jobId)}`));
    const loadExecutions = latest((nextToken) => api('GET', withQuery(
      `/api/v1/jobs/${enc(jobId)}/executions`,
      { status: status.el.value, limit: PAGE_SIZE, nextToken })));

    function showJob(job) {
      headBadge.replaceChildren(badge(job.status));
      const d = job.jobProcessDetails || {};
      summary.replaceChildren(progressBar(d, job.remainingTargets, true),
        legend(d, job.remainingTargets));
      const ended = job.status === 'COMPLETED' || job.status === 'CANCELED';
      cancelButton.disabled = ended;
      forceButton.disabled = ended;
      paused = Boolean(job.paused);
      pauseButton.textContent = paused ? 'Resume' : 'Pause';
      pauseButton.disabled = ended || job.status === 'SCHEDULED';
      const targets = job.targets || {};
      info.replaceChildren(h('div', { class: 'grid' },
        card('Job', definitions([
          ['Status', job.status, 'status'],
          job.paused ? ['Paused', [fmtTime(job.paused.pausedAt), ' · ',
            pauseText(job.paused.reason || {})], 'paused'] : null,
          job.name ? ['Name', job.name] : null,
          job.description ? ['Description', job.description] : null,
          ['Type', job.targetSelection],
          ['Things', (targets.thingNames || []).length ? (targets.thingNames || [])
            .map((t, i) => [i ? ', ' : '', link(thingHref(t), t)]) : '—'],
          ['Groups', (targets.thingGroupNames || []).length ? (targets.thingGroupNames || [])
            .map((g, i) => [i ? ', ' : '', link(groupHref(g), g)]) : '—'],
          ['Created', fmtTime(job.createdAt)],
          ['Started', fmtTime(job.startedAt)],
          ['Ended', fmtTime(job.completedAt)],
          ['Rollout stopped', job.rolloutStopped ? 'yes' : 'no'],
          job.forceCanceled ? ['Force-canceled', 'yes'] : null,
          job.cancelReason ? ['Cancel reason', compact(job.cancelReason, 200)] : null,
        ])),
        settingsCard(job),
        job.stageProgress ? stagesCard(job.stageProgress) : null,
        card('Document', pretty(job.document))));
    }

    async function refresh() {
      const [job, executions] = await Promise.all([loadJob(),
        loadExecutions(pages.token())]);
      if (job.fresh) showJob(job.result);
      if (!executions.fresh) return;
      const page = executions.result;
      pages.update(page.nextToken);
      if (!page.items.length) {
        emptyRow(list.body, 7, 'No executions here (yet).');
        return;
      }
      list.body.replaceChildren(...page.items.map((e) => h('tr', { 'data-thing': e.thingName },
        h('td', {}, link(executionHref(e.jobId, e.thingName), e.thingName)),
        h('td', {}, badge(e.status)),
        h('td', { class: 'num' }, e.executionNumber),
        h('td', { class: 'num' }, e.versionNumber),
        h('td', {}, fmtTime(e.queuedAt)),
        h('td', {}, fmtTime(e.startedAt)),
        h('td', {}, fmtTime(e.lastUpdatedAt)))));
    }
    status.el.addEventListener('change', () => {
      pages.reset();
      now(refresh, box);
    });
    main.append(heading, box,
      card('Progress', summary, h('p', { class: 'hint' }, 'Live: refreshed every second.')),
      info,
      card('Actions', actionBox, h('div', { class: 'toolbar' }, pauseButton, cancelButton,
        forceButton,
        h('span', { class: 'hint' }, 'Pause stops queueing (devices at work go on); ',
          'cancel stops the rollout and cancels queued executions; ',
          'force cancel also cancels those in progress.'))),
      card('Executions', h('div', { class: 'toolbar' }, status.wrap), list.el, pages.el));
    poll(POLL_MS, refresh, box);
  }

  // ---- history timelines -------------------------------------------------------------------

  // The event history of one execution: `items` of {position, streamVersion, eventId,
  // recordedAt, type, details} with `nextToken`. Servers without the history route answer
  // 404; the console says so instead of failing.
  function historyCard(path) {
    const body = h('div', { id: 'history' }, h('p', { class: 'muted' }, 'Loading…'));
    const more = h('button', { type: 'button', class: 'secondary', hidden: true },
      'Load more');
    const reload = h('button', { type: 'button', class: 'secondary', id: 'history-refresh' },
      'Refresh');
    let list;
    let next;
    const gen = generation;
    async function load(reset) {
      let page;
      try {
        page = await api('GET', withQuery(path, { nextToken: reset ? undefined : next }));
      } catch (error) {
        if (!isCurrent(gen)) return;
        more.hidden = true;
        if (error instanceof ApiError && error.status === 404) {
          const why = error.serverMessage.startsWith('no route')
            ? 'this server does not serve execution histories yet.'
            : error.serverMessage || 'not found.';
          body.replaceChildren(h('p', { class: 'notice', id: 'history-unavailable' },
            `History not available: ${why}`));
        } else {
          body.replaceChildren(h('p', { class: 'error' }, error.message || String(error)));
        }
        return;
      }
      if (!isCurrent(gen)) return;
      if (reset || !list) {
        list = h('ol', { class: 'timeline' });
        body.replaceChildren(list);
      }
      for (const event of page.items || []) {
        const details = event.details;
        const hasDetails = details !== undefined && details !== null &&
          !(typeof details === 'object' && Object.keys(details).length === 0);
        list.append(h('li', { 'data-type': event.type, 'data-position': event.position },
          h('span', { class: 'type' }, event.type),
          h('span', { class: 'when' }, fmtTime(event.recordedAt)),
          h('div', { class: 'hint mono' }, `position ${event.position} · stream version ` +
            `${event.streamVersion} · event ${event.eventId}`),
          hasDetails ? pretty(details) : null));
      }
      if (!list.children.length) {
        body.replaceChildren(h('p', { class: 'muted' }, 'No events.'));
        list = undefined;
      }
      next = page.nextToken;
      more.hidden = !next;
    }
    more.addEventListener('click', () => load(false));
    reload.addEventListener('click', () => load(true));
    return { el: card('History', body, h('div', { class: 'pager' }, more, reload)),
      reload: () => load(true) };
  }

  function viewExecution(jobId, thing) {
    const box = errorBox();
    const headBadge = h('span', { id: 'execution-status' });
    const info = h('div');
    const timeline = historyCard(
      `/api/v1/jobs/${enc(jobId)}/things/${enc(thing)}/history`);
    let version;
    const load = latest(() => api('GET', `/api/v1/jobs/${enc(jobId)}/things/${enc(thing)}`));
    async function refresh() {
      const { fresh, result: e } = await load();
      if (!fresh) return;
      headBadge.replaceChildren(badge(e.status));
      const details = Object.entries(e.statusDetails || {});
      info.replaceChildren(card('Execution', definitions([
        ['Job', link(jobHref(e.jobId), e.jobId)],
        ['Thing', link(thingHref(e.thingName), e.thingName)],
        ['Status', e.status, 'status'],
        ['Attempt', e.executionNumber],
        ['Version', e.versionNumber],
        ['Queued', fmtTime(e.queuedAt)],
        ['Started', fmtTime(e.startedAt)],
        ['Last update', fmtTime(e.lastUpdatedAt)],
        ['Status details', details.length ? h('table', {}, h('tbody', {}, details.map(([k, v]) =>
          h('tr', {}, h('td', { class: 'mono' }, k), h('td', {}, v))))) : 'none'],
      ])));
      // A new version means new events: refresh the timeline with it.
      if (version !== undefined && version !== e.versionNumber) timeline.reload();
      version = e.versionNumber;
    }
    main.append(h('h1', {}, 'Execution ', h('span', { class: 'mono' }, `${jobId} / ${thing}`),
      headBadge), box, info, timeline.el);
    timeline.reload();
    poll(POLL_MS, refresh, box);
  }

  // ---- commands ----------------------------------------------------------------------------

  // Terminal commands never change: their details are fetched once.
  const commandCache = new Map();

  async function commandDetails(id) {
    if (commandCache.has(id)) return commandCache.get(id);
    const c = await api('GET', `/api/v1/commands/${enc(id)}`);
    if (c.status !== 'SENT') commandCache.set(id, c);
    return c;
  }

  function resultText(c) {
    if (!c) return '—';
    if (c.result !== undefined) return compact(c.result, 120);
    return c.statusReason || '—';
  }

  // The commands table with its filters: `thing` fixes the thing (the thing page).
  function commandList(thing) {
    const box = errorBox();
    const thingFilter = h('input', { id: 'commands-thing', placeholder: 'any thing' });
    const status = select('commands-status', 'Status', COMMAND_STATUSES, 'all');
    const action = h('input', { id: 'commands-action', placeholder: 'any action' });
    const list = table(['Execution', 'Thing', 'Action', 'Status', 'Result', 'Sent'],
      'commands');
    const pages = pager(() => refresh());
    const load = latest(async (nextToken) => {
      const page = await api('GET', withQuery('/api/v1/commands', {
        thingName: thing || thingFilter.value.trim(), status: status.el.value,
        limit: PAGE_SIZE, nextToken,
      }));
      // The list carries the action but no result: each row's details are fetched for it
      // (terminal ones once). The action is matched here, as a substring, page by page.
      const details = await Promise.all(page.items.map((c) =>
        commandDetails(c.executionId).catch(() => undefined)));
      return { page, details };
    });
    async function refresh() {
      const { fresh, result } = await load(pages.token());
      if (!fresh) return;
      const { page, details } = result;
      pages.update(page.nextToken);
      const wanted = action.value.trim().toLowerCase();
      const rows = page.items.map((c, i) => [c, details[i]]).filter(([c]) => !wanted ||
        c.action.toLowerCase().includes(wanted));
      if (!rows.length) {
        emptyRow(list.body, 6, 'No commands here.');
        return;
      }
      list.body.replaceChildren(...rows.map(([c, d]) => h('tr',
        { 'data-execution': c.executionId },
        h('td', { class: 'mono' }, link(commandHref(c.executionId), c.executionId)),
        h('td', {}, link(thingHref(c.thingName), c.thingName)),
        h('td', {}, c.action),
        h('td', {}, badge(c.status)),
        h('td', { class: 'mono', title: d && d.result !== undefined
          ? JSON.stringify(d.result) : null }, resultText(d)),
        h('td', {}, fmtTime(c.sentAt)))));
    }
    const onFilter = () => {
      pages.reset();
      now(refresh, box);
    };
    thingFilter.addEventListener('change', onFilter);
    status.el.addEventListener('change', onFilter);
    action.addEventListener('input', () => now(refresh, box));
    const el = card(thing ? 'Commands' : 'Recent commands',
      h('div', { class: 'toolbar' },
        thing ? null : h('label', { for: 'commands-thing' }, 'Thing', thingFilter),
        status.wrap, h('label', { for: 'commands-action' }, 'Action', action),
        h('span', { class: 'hint' }, 'The action is filtered in the browser, page by page.')),
      box, list.el, pages.el);
    return { el, refresh, box };
  }

  function sendCommandForm(onSent) {
    const box = errorBox();
    const thing = h('input', { id: 'cmd-thing', name: 'thingName', required: true,
      placeholder: 'lamp-1' });
    const action = h('input', { id: 'cmd-action', name: 'action', required: true,
      placeholder: 'reboot' });
    const params = h('textarea', { id: 'cmd-params', name: 'params', rows: 3 });
    params.value = '{}';
    const ttl = h('input', { id: 'cmd-ttl', name: 'ttl', type: 'number', min: 1, max: 86400,
      value: 60 });
    const submit = h('button', { type: 'submit', id: 'send-command' }, 'Send');
    const result = h('div', { class: 'result', id: 'cmd-result' });
    let watching = 0;
    async function watch(id) {
      const mine = ++watching;
      const gen = generation;
      for (;;) {
        if (mine !== watching || !isCurrent(gen)) return;
        let c;
        try {
          c = await api('GET', `/api/v1/commands/${enc(id)}`);
        } catch (error) {
          showError(box, error);
          return;
        }
        if (mine !== watching || !isCurrent(gen)) return;
        result.replaceChildren(definitions([
          ['Execution', link(commandHref(id), id)],
          ['Status', badge(c.status), 'status'],
          c.result !== undefined ? ['Result', pretty(c.result), 'result'] : null,
          c.statusReason ? ['Reason', c.statusReason, 'reason'] : null,
        ]));
        if (c.status !== 'SENT') { onSent(); return; }
        await new Promise((resolve) => setTimeout(resolve, POLL_MS));
      }
    }
    const form = h('form', { class: 'stack', id: 'send-command-form', onsubmit: async (event) => {
      event.preventDefault();
      clearError(box);
      let parsed;
      try {
        parsed = JSON.parse(params.value || '{}');
      } catch (error) {
        showError(box, new Error(`The params are not JSON: ${error.message}`));
        return;
      }
      submit.disabled = true;
      try {
        const sent = await api('POST', '/api/v1/commands', { thingName: thing.value.trim(),
          action: action.value, params: parsed, ttl: Number(ttl.value) || 60 });
        result.replaceChildren(h('p', {}, 'Sent as ', link(commandHref(sent.executionId),
          sent.executionId), '; waiting for the device…'));
        onSent();
        watch(sent.executionId);
      } catch (error) {
        showError(box, error);
      } finally {
        submit.disabled = false;
      }
    } },
    h('label', { for: 'cmd-thing' }, 'Thing'), thing,
    h('label', { for: 'cmd-action' }, 'Action'), action,
    h('label', { for: 'cmd-params' }, 'Params (JSON)'), params,
    h('label', { for: 'cmd-ttl' }, 'TTL (seconds)'), ttl,
    h('div', { class: 'actions' }, submit));
    return card('Send a command', box, form, result);
  }

  function viewCommands() {
    const list = commandList();
    main.append(h('h1', {}, 'Commands'),
      sendCommandForm(() => now(list.refresh, list.box)), list.el);
    poll(LIST_POLL_MS, list.refresh, list.box);
  }

  function viewCommand(id) {
    const box = errorBox();
    const headBadge = h('span', { id: 'command-status' });
    const info = h('div');
    const actionBox = errorBox();
    const cancelButton = h('button', { type: 'button', class: 'danger', id: 'cancel-command',
      disabled: true, onclick: async () => {
        if (!window.confirm(`Cancel command ${id}?`)) return;
        try {
          await api('POST', `/api/v1/commands/${enc(id)}/cancel`, {});
          await refresh();
        } catch (error) {
          showError(actionBox, error);
        }
      } }, 'Cancel');
    const timeline = historyCard(`/api/v1/commands/${enc(id)}/history`);
    let lastStatus;
    const load = latest(() => api('GET', `/api/v1/commands/${enc(id)}`));
    async function refresh() {
      const { fresh, result: c } = await load();
      if (!fresh) return;
      headBadge.replaceChildren(badge(c.status));
      cancelButton.disabled = c.status !== 'SENT';
      info.replaceChildren(h('div', { class: 'grid' }, card('Command', definitions([
        ['Thing', link(thingHref(c.thingName), c.thingName)],
        ['Action', c.action, 'action'],
        ['Status', c.status, 'status'],
        c.commandId ? ['Command id', c.commandId] : null,
        ['TTL', `${c.ttl} s`],
        ['Sent', fmtTime(c.sentAt)],
        ['Deadline', fmtTime(c.deadline)],
        ['Completed', fmtTime(c.completedAt)],
        c.statusReason ? ['Reason', c.statusReason, 'reason'] : null,
      ])), card('Params', pretty(c.params)),
      card('Result', c.result !== undefined ? pretty(c.result) : h('p', { class: 'muted' },
        'none yet'))));
      if (lastStatus !== undefined && lastStatus !== c.status) timeline.reload();
      lastStatus = c.status;
    }
    main.append(h('h1', {}, 'Command ', h('span', { class: 'mono' }, id), headBadge), box, info,
      card('Actions', actionBox, cancelButton), timeline.el);
    timeline.reload();
    poll(POLL_MS, refresh, box);
  }

  // ---- things and groups -------------------------------------------------------------------

  function lookup(id, label, placeholder, hrefOf, hint) {
    const input = h('input', { id, required: true, placeholder });
    return card(null, h('form', { class: 'toolbar', onsubmit: (event) => {
      event.preventDefault();
      if (input.value.trim()) go(hrefOf(input.value.trim()));
    } }, h('label', { for: id }, label, input), h('button', { type: 'submit' }, 'Open')),
    h('p', { class: 'hint' }, hint));
  }

  function viewThings() {
    main.append(h('h1', {}, 'Things'), lookup('thing-name', 'Thing name', 'lamp-1', thingHref,
      'The API keeps no list of things: open one by name, or follow a thing from a job ' +
      'execution, a command or a group.'));
  }

  function viewThing(thing) {
    const box = errorBox();
    const status = select('thing-jobs-status', 'Status', EXECUTION_STATUSES, 'all');
    const list = table(['Job', 'Status', '#Attempt', 'Queued', 'Started', 'Last update'],
      'thing-jobs');
    const pages = pager(() => refresh());
    const load = latest((nextToken) => api('GET', withQuery(
      `/api/v1/things/${enc(thing)}/jobs`, { status: status.el.value, limit: PAGE_SIZE,
        nextToken })));
    async function refresh() {
      const { fresh, result } = await load(pages.token());
      if (!fresh) return;
      pages.update(result.nextToken);
      if (!result.items.length) {
        emptyRow(list.body, 6, 'No job executions here.');
        return;
      }
      list.body.replaceChildren(...result.items.map((e) => h('tr', { 'data-job': e.jobId },
        h('td', {}, link(executionHref(e.jobId, e.thingName), e.jobId)),
        h('td', {}, badge(e.status)),
        h('td', { class: 'num' }, e.executionNumber),
        h('td', {}, fmtTime(e.queuedAt)),
        h('td', {}, fmtTime(e.startedAt)),
        h('td', {}, fmtTime(e.lastUpdatedAt)))));
    }
    status.el.addEventListener('change', () => {
      pages.reset();
      now(refresh, box);
    });
    const commands = commandList(thing);
    main.append(h('h1', {}, 'Thing ', h('span', { class: 'mono' }, thing)),
      card('Jobs', h('div', { class: 'toolbar' }, status.wrap), box, list.el, pages.el),
      commands.el);
    poll(LIST_POLL_MS, refresh, box);
    poll(LIST_POLL_MS, commands.refresh, commands.box);
  }

  function viewGroups() {
    main.append(h('h1', {}, 'Thing groups'), lookup('group-name', 'Group name', 'lamps',
      groupHref, 'The API has no route listing every group: open one by name, or follow a ' +
      'group from a job\'s targets.'));
  }

  function viewGroup(name) {
    const box = errorBox();
    const info = h('div', {}, h('p', { class: 'muted' }, 'Loading…'));
    const list = table(['Member'], 'members');
    const pages = pager(() => refresh());
    const loadGroup = latest(() => api('GET', `/api/v1/thing-groups/${enc(name)}`));
    const loadMembers = latest((nextToken) => api('GET', withQuery(
      `/api/v1/thing-groups/${enc(name)}/members`, { limit: PAGE_SIZE, nextToken })));
    async function refresh() {
      let group;
      try {
        group = await loadGroup();
      } catch (error) {
        if (error instanceof ApiError && error.status === 404) {
          info.replaceChildren(h('p', { class: 'notice' }, `No group named ${name}.`));
          list.body.replaceChildren();
          return;
        }
        throw error;
      }
      if (group.fresh) {
        const g = group.result;
        info.replaceChildren(definitions([
          ['Name', g.thingGroupName],
          ['Description', g.description || '—'],
          ['Members', g.numberOfThings, 'members'],
        ]));
      }
      const members = await loadMembers(pages.token());
      if (!members.fresh) return;
      pages.update(members.result.nextToken);
      if (!members.result.items.length) {
        emptyRow(list.body, 1, 'No members.');
        return;
      }
      list.body.replaceChildren(...members.result.items.map((t) =>
        h('tr', {}, h('td', {}, link(thingHref(t), t)))));
    }
    main.append(h('h1', {}, 'Group ', h('span', { class: 'mono' }, name)), box,
      card('Group', info), card('Members', list.el, pages.el));
    poll(LIST_POLL_MS, refresh, box);
  }

  // ---- router ------------------------------------------------------------------------------

  const ROUTES = [
    [/^#\/login$/, viewLogin],
    [/^#\/jobs$/, viewJobs],
    [/^#\/jobs\/([^/]+)$/, viewJob],
    [/^#\/jobs\/([^/]+)\/things\/([^/]+)$/, viewExecution],
    [/^#\/commands$/, viewCommands],
    [/^#\/commands\/([^/]+)$/, viewCommand],
    [/^#\/things$/, viewThings],
    [/^#\/things\/([^/]+)$/, viewThing],
    [/^#\/groups$/, viewGroups],
    [/^#\/groups\/([^/]+)$/, viewGroup],
  ];

  function render() {
    generation += 1;
    const hash = location.hash && location.hash !== '#' ? location.hash : '#/jobs';
    if (!token() && hash !== '#/login') {
      afterLogin = hash;
      go('#/login');
      return;
    }
    logoutButton.hidden = !token();
    const section = hash.split('/')[1] || '';
    for (const a of document.querySelectorAll('#nav a')) {
      a.classList.toggle('active', a.dataset.section === section);
    }
    main.replaceChildren();
    for (const [pattern, view] of ROUTES) {
      const match = hash.match(pattern);
      if (!match) continue;
      let args;
      try {
        args = match.slice(1).map(decodeURIComponent);
      } catch (_) {
        break;
      }
      view(...args);
      return;
    }
    main.append(h('h1', {}, 'Not found'), h('p', {}, 'No page at ', h('code', {}, hash), '. ',
      link('#/jobs', 'Back to the jobs.')));
  }

  // `…/#token=…` (the demo prints such a link) logs in at once; the token then leaves the URL.
  if (location.hash.startsWith('#token=')) {
    try {
      sessionStorage.setItem(TOKEN_KEY,
        decodeURIComponent(location.hash.slice('#token='.length)));
    } catch (_) {
      // A mangled link: the login page asks for the token instead.
    }
    window.history.replaceState(null, '', '#/jobs');
  }
  logoutButton.addEventListener('click', () => logout('Logged out.'));
  window.addEventListener('hashchange', render);
  render();
})();
