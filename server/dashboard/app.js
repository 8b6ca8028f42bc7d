// app.js: the pinion dashboard's only script. An operator sees at a glance which
// gateways are online and run what they should and how a rollout goes, and acts on it
// (releases, rollouts wave by wave, rollbacks, keys) without curl. It is a presentation
// of the JSON API under /api/v1 with the session cookie: it can do nothing the API cannot.
//
// Every name, label, report and message comes from devices or registries: untrusted. So,
// and for the server's strict CSP: no inline code or style, no HTML parsed from strings;
// the DOM is built with createElement and textContent through h(); links are '#/…'
// routes built with encodeURIComponent. The ids, classes and data attributes below are
// what the browser test drives: keep them.
//
// A hash router picks a view; a view builds its page once (headings, forms, empty
// tables), and its refresh() (every 5 s) updates only the data regions, row by row, so
// that a form is never redrawn and scroll and focus stay.

(function () {
'use strict';

const API_ROOT = '/api/v1';
const REFRESH_MS = 5000;
const PAGE_SIZE = 50;
/** Rows shown at most in one table (a rollout of a big fleet). */
const MAX_ROWS = 500;
/** Newest releases whose images (one request each, cached: releases never change) are shown. */
const RELEASES_WITH_IMAGES = 20;
const CONNECTIVITY = [['online', 'online'], ['stale', 'stale'], ['offline', 'offline'], ['never-seen', 'neverSeen']];
const SYNC = [['in-sync', 'inSync'], ['updating', 'updating'], ['drifting', 'drifting'], ['failed', 'failed'],
  ['no-target', 'noTarget']];
const DEVICE_STATES = [...CONNECTIVITY, ...SYNC].map(([state]) => state);
const WAVE_STATES = ['healthy', 'updating', 'failed', 'deferred', 'pending'];
const ROLLOUT_ACTIONS = {
  running: ['pause', 'promote', 'abort', 'abort-rollback'],
  paused: ['resume', 'promote', 'abort', 'abort-rollback'],
  waiting: ['abort', 'abort-rollback'],
};
const ACTION_LABELS = {
  pause: 'Pause', resume: 'Resume', promote: 'Promote: next wave now', abort: 'Abort',
  'abort-rollback': 'Abort and roll back',
};
const RELEASE_EXAMPLES = {
  json: '{"apps": {"1": {"appName": "web", "services": {"nginx": {"imageName": "nginx:1.27"}}}}}',
  compose: 'services:\n  web:\n    image: nginx:1.27\n    ports:\n      - "8080:80"\n',
};

/** What is on screen: signed in or not, the view, the auto-refresh timer. */
const app = { signedIn: false, view: null, timer: null, flashFromRefresh: false };

// ------------------------------------------------------------------ DOM building

/** Properties set as such (after the children, so a select's value finds its option). */
const PROPERTIES = new Set(['value', 'checked', 'disabled', 'hidden', 'required', 'selected']);

/**
 * h('a', {href: '#/x', class: ['link', active && 'on'], on: {click: f}}, 'text', node, [more])
 * Text children become text nodes; null, undefined and false are skipped.
 */
function h(tag, attrs, ...children) {
  const element = document.createElement(tag);
  const properties = [];
  for (const [name, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (name === 'on') {
      for (const [event, handler] of Object.entries(value)) element.addEventListener(event, handler);
    } else if (name === 'class') {
      element.className = Array.isArray(value) ? value.filter(Boolean).join(' ') : value;
    } else if (PROPERTIES.has(name)) {
      properties.push([name, value]);
    } else if (/^on|^style$|^src$|^srcdoc$|^action$|^formaction$/i.test(name)) {
      throw new Error(`h(): attribute ${name} is not built here`);
    } else if (name === 'href' && !String(value).startsWith('#/')) {
      throw new Error('h(): links are #/ routes only');
    } else {
      element.setAttribute(name, value === true ? '' : String(value));
    }
  }
  element.append(...nodes(children));
  for (const [name, value] of properties) element[name] = value;
  return element;
}

/** Children as a flat list of nodes and strings (append() makes strings text nodes). */
function nodes(children) {
  return [children].flat(Infinity)
    .filter((child) => child !== null && child !== undefined && child !== false)
    .map((child) => (child instanceof Node ? child : String(child)));
}

/** A route: '#/device/a%2Fb', each part encoded. */
function route(...parts) {
  return '#/' + parts.map((part) => encodeURIComponent(String(part))).join('/');
}

/** '?a=1&b=x%3Dy' from the non-empty values (encodeURIComponent: the server reads '+' as '+'). */
function queryString(params) {
  const pairs = Object.entries(params)
    .filter(([, value]) => value !== undefined && value !== null && value !== '')
    .map(([name, value]) => `${encodeURIComponent(name)}=${encodeURIComponent(String(value))}`);
  return pairs.length ? '?' + pairs.join('&') : '';
}

const seg = (part) => encodeURIComponent(String(part));

/** Runs a DOM change without moving the page (tables keep their box, so their scroll). */
function keepingScroll(change) {
  const x = window.scrollX;
  const y = window.scrollY;
  change();
  if (window.scrollX !== x || window.scrollY !== y) window.scrollTo(x, y);
}

const shownData = new WeakMap();

/** Fills `region` with build(data), only when data differs from what it shows. */
function show(region, data, build) {
  const key = JSON.stringify(data);
  if (shownData.get(region) === key) return;
  shownData.set(region, key);
  keepingScroll(() => region.replaceChildren(...nodes(build(data))));
}

const rowData = new WeakMap();

/**
 * Makes `parent`'s children one per item, in order: a child whose item did not change
 * is kept as it is (a link or button the operator is about to click stays), others are
 * built anew. `empty` (optional) is shown when there are no items.
 */
function fillList(parent, empty, items, keyOf, build) {
  const existing = new Map();
  for (const child of parent.children) {
    const known = rowData.get(child);
    if (known) existing.set(known.key, child);
  }
  const wanted = items.map((item) => {
    const key = String(keyOf(item));
    const json = JSON.stringify(item);
    const old = existing.get(key);
    if (old && rowData.get(old).json === json) return old;
    const fresh = build(item);
    rowData.set(fresh, { key, json });
    return fresh;
  });
  keepingScroll(() => {
    const keep = new Set(wanted);
    for (const child of [...parent.children]) if (!keep.has(child)) child.remove();
    wanted.forEach((child, i) => {
      if (parent.children[i] !== child) parent.insertBefore(child, parent.children[i] || null);
    });
  });
  if (empty) empty.hidden = items.length > 0;
}

/** A table in a horizontally scrolling box, with a note for when it is empty. */
function dataTable(id, headers, emptyText) {
  const tbody = h('tbody');
  const empty = h('p', { class: 'empty', hidden: true }, emptyText);
  const table = h('table', { id },
    h('thead', {}, h('tr', {}, headers.map((title) => h('th', { scope: 'col' }, title)))), tbody);
  const wrap = h('div', { class: 'table-wrap' }, table);
  return {
    box: [wrap, empty],
    fill(items, keyOf, build) {
      fillList(tbody, empty, items, keyOf, build);
      wrap.hidden = items.length === 0;
    },
  };
}

/** Options of a select, [[value, label]…]; left alone while the operator is in it. */
const shownOptions = new WeakMap();
function setOptions(select, options, wanted) {
  if (document.activeElement === select) return;
  if (wanted && !options.some(([value]) => value === wanted)) options = [...options, [wanted, wanted]];
  const key = JSON.stringify(options);
  if (shownOptions.get(select) !== key) {
    shownOptions.set(select, key);
    select.replaceChildren(...options.map(([value, label]) => h('option', { value }, label)));
  }
  select.value = wanted || '';
}

const panel = (title, ...children) => h('section', { class: 'panel' }, h('h2', {}, title), children);
const field = (label, control, hint) =>
  h('label', { class: 'field' }, h('span', { class: 'field-label' }, label), control,
    hint ? h('small', { class: 'hint' }, hint) : null);
const textInput = (id, placeholder) =>
  h('input', { id, type: 'text', placeholder, autocomplete: 'off', spellcheck: 'false' });
const checkField = (label, input) => h('label', { class: 'check' }, input, h('span', {}, label));
const emptyNote = (text) => h('p', { class: 'empty', hidden: true }, text);
const dash = () => h('span', { class: 'muted' }, '—');
const fact = (term, ...value) => [h('dt', {}, term), h('dd', {}, value)];

// ------------------------------------------------------------------ formatting

/** 'sha256:' and the first 12 hex digits. */
function shortDigest(digest) {
  const match = /sha256:([0-9a-f]{12})/i.exec(digest || '');
  return match ? 'sha256:' + match[1].toLowerCase() : digest || '';
}

/** '127.0.0.1:5000/web:1@sha256:abcd…' → 'web:1@sha256:abcdef012345' (the title keeps it whole). */
function shortImage(reference) {
  if (!reference) return '';
  const at = reference.indexOf('@');
  const name = at >= 0 ? reference.slice(0, at) : reference;
  if (at < 0 && /^sha256:/i.test(name)) return shortDigest(name);
  const last = name.slice(name.lastIndexOf('/') + 1);
  return at >= 0 ? `${last}@${shortDigest(reference.slice(at + 1))}` : last;
}

/** What the devices list shows of an image: its short digest, else its tag. */
const digestOrTag = (reference) =>
  (/@sha256:/i.test(reference || '') ? shortDigest(reference.split('@')[1]) : shortImage(reference));

/** A target as the operator wrote it and what it was pinned to: 'nginx:1.27 sha256:0123456789ab'. */
const targetText = (service, show) =>
  (service.requested && service.requested !== service.targetImage
    ? `${service.requested.slice(service.requested.lastIndexOf('/') + 1)} ${digestOrTag(service.targetImage)}`
    : show(service.targetImage));

const shortId = (id) => (id && id.length > 12 ? id.slice(0, 12) + '…' : id || '');
const plural = (count, word) => `${count} ${word}${count === 1 ? '' : 's'}`;

function relativeTime(iso) {
  const at = Date.parse(iso);
  if (Number.isNaN(at)) return String(iso);
  const seconds = Math.round((Date.now() - at) / 1000);
  if (seconds > -10 && seconds < 1) return 'just now';
  const size = Math.abs(seconds);
  const text = size < 60 ? `${size} s`
    : size < 3600 ? `${Math.floor(size / 60)} min`
      : size < 86400 ? `${Math.floor(size / 3600)} h`
        : `${Math.floor(size / 86400)} d`;
  return seconds > 0 ? `${text} ago` : `in ${text}`;
}

/** A relative time that the refresh keeps current, the ISO time in its title. */
function when(iso, missing = '—') {
  if (!iso) return h('span', { class: 'muted' }, missing);
  return h('time', { datetime: iso, title: iso, 'data-ago': iso }, relativeTime(iso));
}

function updateTimes() {
  for (const time of document.querySelectorAll('time[data-ago]')) {
    const text = relativeTime(time.getAttribute('data-ago'));
    if (time.textContent !== text) time.textContent = text;
  }
}

/** A coloured state word; the class is the state with anything odd taken out. */
function stateBadge(state, id) {
  const text = state || 'unknown';
  return h('span', { class: 'badge state-' + text.toLowerCase().replace(/[^a-z-]/g, ''), id }, text);
}

function labelChips(labels) {
  const pairs = Object.entries(labels || {});
  if (!pairs.length) return null;
  return h('span', { class: 'chips' }, pairs.map(([key, value]) => h('span', { class: 'chip' }, `${key}=${value}`)));
}

const deviceLink = (uuid, text, className) =>
  h('a', { href: route('device', uuid), class: className, title: uuid }, text || uuid);
const fleetLink = (name, className) => h('a', { href: route('fleet', name), class: className }, name);
const rolloutLink = (fleet, id, text, className) =>
  h('a', { href: route('fleet', fleet, 'rollout', id), class: className }, text || `rollout ${id}`);

/** Why a device runs what it runs (a target state's "source"). */
function sourceText(source) {
  if (!source) return dash();
  const kind = String(source.kind || 'unknown');
  let text;
  switch (kind) {
    case 'fleet':
      text = [`fleet release ${source.release ?? '?'}`];
      break;
    case 'rollout':
      text = source.fleet && source.rollout
        ? [rolloutLink(source.fleet, source.rollout), ` · release ${source.release ?? '?'}`]
        : [`rollout · release ${source.release ?? '?'}`];
      break;
    case 'device':
      text = [source.pinned ? 'pinned: own target' : 'own target'];
      break;
    default:
      text = [kind];
  }
  return h('span', { class: 'source', 'data-kind': kind }, text);
}

/** '1 device, 10%, site=berlin, 100%' */
function waveSpecText(wave) {
  if (!wave) return '';
  if (wave.devices) return plural(wave.devices, 'device');
  if (wave.percent) return `${wave.percent}%`;
  return Object.entries(wave.labels || {}).map(([key, value]) => `${key}=${value}`).join(' ') || '?';
}

function maxFailuresText(max) {
  const parts = [];
  if (max && max.count !== undefined && max.count !== null) parts.push(`more than ${max.count}`);
  if (max && max.percent !== undefined && max.percent !== null) parts.push(`more than ${max.percent}%`);
  return parts.length ? parts.join(' or ') + ' failed' : 'the first failure';
}

function planFacts(plan) {
  if (!plan) return [];
  return [
    fact('Waves', (plan.waves || []).map(waveSpecText).join(', ')),
    fact('Bake time', plan.bakeTime || '—'),
    fact('Success at', `${plan.successPercent ?? 100}% healthy`),
    fact('Stops at', `${maxFailuresText(plan.maxFailures)}, then ${plan.onFailure || 'pause'}`),
    fact('Device timeout', plan.deviceTimeout || '—'),
  ];
}

/** An update window: '02:00–04:00 Europe/Berlin', or '' for none. */
const windowText = (hours) => (hours ? `${hours.start}–${hours.end} ${hours.timezone || 'UTC'}` : '');

/** '[[appKey, app]…]' from an object keyed by id or an array (both are valid). */
function keyedEntries(keyed) {
  if (Array.isArray(keyed)) return keyed.map((value, i) => [String(i), value]);
  return keyed && typeof keyed === 'object' ? Object.entries(keyed) : [];
}

// ------------------------------------------------------------------ API client

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

/** A JSON answer, or an ApiError with the server's message. A string body is sent as is. */
async function request(method, path, body, contentType = 'application/json') {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (body !== undefined) {
    init.headers['Content-Type'] = contentType;
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(API_ROOT + path, init);
  } catch (error) {
    throw new ApiError(0, `The server did not answer (${error.message}).`);
  }
  const text = await response.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch (error) {
    data = null;
  }
  if (!response.ok) {
    const message = (data && (data.message || data.error)) || `${response.status} ${response.statusText}`;
    throw new ApiError(response.status, message);
  }
  return data;
}

const get = (path) => request('GET', path);

// ------------------------------------------------------------------ messages and actions

function flash(text, isError = false) {
  const box = document.getElementById('flash');
  box.textContent = text || '';
  box.classList.toggle('error', Boolean(text) && isError);
  box.classList.toggle('ok', Boolean(text) && !isError);
  app.flashFromRefresh = false;
  app.flashAt = Date.now();
}

/** A message belongs to the page it was said on, and to the page its action opened. */
const FLASH_FOLLOWS_MS = 1500;

function reportError(error) {
  if (error instanceof ApiError && error.status === 401) {
    showSignin('Your session has ended: sign in again.');
    return;
  }
  flash(error && error.message ? error.message : String(error), true);
}

/**
 * Runs an operator's action from `button` (disabled meanwhile): the answer's
 * description goes to #flash, then the view refreshes. The answer, or undefined.
 */
async function act(button, work, describe, { refresh = true } = {}) {
  if (button) button.disabled = true;
  try {
    const answer = await work();
    flash(describe(answer));
    if (refresh) await refreshView();
    return answer;
  } catch (error) {
    reportError(error);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

// ------------------------------------------------------------------ overview

function overviewView() {
  const cards = h('div', { class: 'cards', id: 'fleet-cards' });
  const noFleets = emptyNote('No device has registered yet.');
  const rollouts = h('div', { class: 'cards', id: 'active-rollouts' });
  const noRollouts = emptyNote('No rollout is running.');
  const events = h('ul', { id: 'events', class: 'events' });
  const noEvents = emptyNote('Nothing has happened yet.');
  return {
    name: 'overview',
    title: 'Overview',
    root: [h('h1', {}, 'Overview'), panel('Fleets', cards, noFleets),
      panel('Active rollouts', rollouts, noRollouts), panel('Last events', events, noEvents)],
    async refresh() {
      const overview = await get('/status/overview');
      fillList(cards, noFleets, overview.fleets || [], (f) => f.fleet ?? '', fleetCard);
      fillList(rollouts, noRollouts, overview.rollouts || [], (r) => r.id, rolloutCard);
      fillList(events, noEvents, overview.events || [], (e) => e.id, eventItem);
    },
  };
}

function fleetCard(counts) {
  const name = counts.fleet;
  const devicesOf = (state) => (name ? route('devices') + queryString({ fleet: name, state }) : null);
  const total = `${plural(counts.devices || 0, 'device')}`;
  return h('article', { class: 'card fleet-card', 'data-fleet': name ?? '' },
    h('header', { class: 'card-head' },
      h('h3', {}, name ? fleetLink(name, 'fleet-link') : 'No fleet'),
      h('span', { class: 'muted' }, counts.release ? `release ${counts.release}` : 'no release')),
    h('p', { class: 'card-total' }, name ? h('a', { href: devicesOf() }, total) : total),
    countGroup('Connectivity', CONNECTIVITY, counts, devicesOf),
    countGroup('Sync', SYNC, counts, devicesOf));
}

/** A stacked bar and the counts of each state, each linking to the devices in it. */
function countGroup(title, states, counts, linkOf) {
  const bar = h('div', { class: 'stack', 'aria-hidden': 'true' });
  for (const [state, key] of states) {
    if (!counts[key]) continue;
    const part = h('span', { class: 'state-' + state });
    part.style.flexGrow = String(counts[key]);
    bar.append(part);
  }
  const items = states.map(([state, key]) => {
    const count = counts[key] || 0;
    const content = [h('span', { class: 'dot state-' + state }), state, ' ', h('b', {}, String(count))];
    const href = linkOf(state);
    return h('li', { class: count ? null : 'zero', 'data-state': state }, href ? h('a', { href }, content) : content);
  });
  return h('div', { class: 'count-group' }, h('h4', {}, title), bar, h('ul', { class: 'counts' }, items));
}

const waveTotal = (wave) => WAVE_STATES.reduce((sum, state) => sum + (wave[state] || 0), 0);

function rolloutCard(rollout) {
  const waves = rollout.waves || [];
  return h('article', { class: 'card rollout', 'data-rollout': rollout.id },
    h('header', { class: 'card-head' },
      h('h3', {}, rolloutLink(rollout.fleet, rollout.id, `${rollout.fleet} · rollout ${rollout.id}`, 'rollout-link')),
      stateBadge(rollout.state)),
    h('p', { class: 'muted' }, `release ${rollout.release}`,
      rollout.currentWave ? ` · wave ${rollout.currentWave} of ${waves.length}` : ' · not started',
      rollout.failed ? ` · ${rollout.failed} failed` : ''),
    waves.map((wave) => waveProgress(wave, wave.wave === rollout.currentWave)));
}

function waveProgress(wave, current) {
  const total = waveTotal(wave);
  const healthy = wave.healthy || 0;
  return h('div', { class: ['wave-progress', current && 'current'] },
    h('span', { class: 'wave-label' }, `Wave ${wave.wave}`),
    h('progress', { max: total || 1, value: healthy, 'aria-label': `wave ${wave.wave}: ${healthy} of ${total} healthy` }),
    h('span', { class: 'wave-count' }, `${healthy}/${total}`,
      wave.failed ? h('span', { class: 'state-text-failed' }, ` · ${wave.failed} failed`) : null));
}

function eventItem(event) {
  return h('li', { class: 'event', 'data-event': event.id },
    h('div', { class: 'event-meta' },
      when(event.at),
      h('span', { class: 'kind' }, event.kind),
      event.fleet ? fleetLink(event.fleet) : null,
      event.rollout && event.fleet ? rolloutLink(event.fleet, event.rollout) : null,
      event.release && !event.rollout ? h('span', {}, `release ${event.release}`) : null,
      event.device ? deviceLink(event.device, shortId(event.device), 'mono') : null),
    h('div', { class: 'message' }, event.message));
}

// ------------------------------------------------------------------ devices

function devicesParams(query) {
  const page = Number.parseInt(query.page, 10);
  return {
    fleet: query.fleet || '', label: query.label || '', state: query.state || '', name: query.name || '',
    page: page > 0 ? page : 1,
  };
}

function devicesHash(params) {
  return route('devices') + queryString({ ...params, page: params.page > 1 ? params.page : '' });
}

function devicesView(query) {
  let params = devicesParams(query);
  const inputs = {
    fleet: h('select', { id: 'filter-fleet' }),
    label: textInput('filter-label', 'key=value'),
    state: h('select', { id: 'filter-state' }, h('option', { value: '' }, 'any state'),
      DEVICE_STATES.map((state) => h('option', { value: state }, state))),
    name: textInput('filter-name', 'name or uuid'),
  };
  const table = dataTable('devices',
    ['Device', 'Fleet', 'Connectivity', 'Sync', 'Target from', 'Services: target ≠ running', 'Agent'],
    'No device matches these filters.');
  const prev = h('button', { id: 'page-prev', type: 'button', class: 'secondary' }, '← Previous');
  const next = h('button', { id: 'page-next', type: 'button', class: 'secondary' }, 'Next →');
  const info = h('span', { id: 'page-info', class: 'muted' });
  prev.addEventListener('click', () => { location.hash = devicesHash({ ...params, page: params.page - 1 }); });
  next.addEventListener('click', () => { location.hash = devicesHash({ ...params, page: params.page + 1 }); });

  let typing = null;
  const applyFilters = () => {
    clearTimeout(typing);
    const wanted = {
      fleet: inputs.fleet.value, label: inputs.label.value.trim(), state: inputs.state.value,
      name: inputs.name.value.trim(), page: 1,
    };
    replaceHash(devicesHash(wanted));
  };
  const form = h('form', { class: 'filters', id: 'device-filters', role: 'search' },
    field('Fleet', inputs.fleet), field('Label', inputs.label), field('State', inputs.state),
    field('Name or uuid', inputs.name));
  form.addEventListener('submit', (event) => { event.preventDefault(); applyFilters(); });
  form.addEventListener('input', (event) => {
    clearTimeout(typing);
    typing = setTimeout(applyFilters, event.target.tagName === 'SELECT' ? 0 : 350);
  });

  /** The inputs show the hash's filters (back and forward), unless being typed in. */
  const showParams = () => {
    for (const name of ['label', 'name', 'state']) {
      if (document.activeElement !== inputs[name] && inputs[name].value !== params[name]) inputs[name].value = params[name];
    }
    setOptions(inputs.fleet, [['', 'all fleets']], params.fleet);
  };
  showParams();

  return {
    name: 'devices',
    title: 'Devices',
    root: [h('h1', {}, 'Devices'), form, table.box, h('div', { class: 'pager' }, prev, info, next)],
    update(newQuery) {
      params = devicesParams(newQuery);
      showParams();
    },
    async refresh() {
      const offset = (params.page - 1) * PAGE_SIZE;
      const asked = { ...params };
      const [fleets, list] = await Promise.all([
        get('/fleets'),
        get('/status/devices' + queryString({
          fleet: asked.fleet, label: asked.label, state: asked.state, name: asked.name, offset, limit: PAGE_SIZE,
        })),
      ]);
      if (JSON.stringify(asked) !== JSON.stringify(params)) return; // the filters moved on meanwhile
      setOptions(inputs.fleet, [['', 'all fleets'], ...(fleets.fleets || []).map((f) => [f.name, f.name])], params.fleet);
      const devices = list.devices || [];
      table.fill(devices, (d) => d.uuid, deviceRow);
      const total = list.total || 0;
      info.textContent = devices.length
        ? `${offset + 1}–${offset + devices.length} of ${total}`
        : `0 of ${total}`;
      prev.disabled = params.page <= 1;
      next.disabled = offset + devices.length >= total;
    },
  };
}

function deviceRow(device) {
  const services = device.services || [];
  return h('tr', { 'data-uuid': device.uuid },
    h('td', {}, deviceLink(device.uuid, device.deviceName || device.uuid, 'device-link'),
      device.deviceName ? h('div', { class: 'sub mono', title: device.uuid }, shortId(device.uuid)) : null,
      labelChips(device.labels)),
    h('td', {}, device.fleet ? fleetLink(device.fleet) : dash()),
    h('td', {}, stateBadge(device.connectivity),
      h('div', { class: 'sub' }, device.lastSeen ? when(device.lastSeen) : 'never seen')),
    h('td', { class: 'wrap' }, stateBadge(device.sync),
      device.reason ? h('div', { class: 'sub reason' }, device.reason) : null),
    h('td', {}, sourceText(device.source)),
    h('td', { class: ['services', services.some((s) => s.differs) && 'differs'] },
      services.length ? services.map(serviceLine) : dash()),
    h('td', {}, device.agentVersion || dash()));
}

/** 'web sha256:0123456789ab ≠ sha256:ba9876543210': the target, and what runs when it differs. */
function serviceLine(service) {
  return h('div', { class: ['svc', service.differs && 'differs'] },
    h('span', { class: 'svc-name' }, service.service), ' ',
    h('span', { class: 'mono', title: service.targetImage || '' }, targetText(service, digestOrTag) || 'no image'),
    service.differs
      ? [' ≠ ', h('span', { class: 'mono', title: service.runningImage || '' },
        service.runningImage ? digestOrTag(service.runningImage) : 'not running')]
      : null);
}

// ------------------------------------------------------------------ one device

function deviceView(uuid) {
  const base = '/devices/' + seg(uuid);
  const title = h('span', {}, uuid);
  const summary = h('div', { id: 'device-summary' });
  const services = dataTable('services', ['Service', 'App', 'Target', 'Running', 'Status', 'Probation', 'Error'],
    'No service to run, none running.');
  const history = h('ul', { id: 'history', class: 'history' });
  const noHistory = emptyNote('No target state yet.');
  const policy = h('div', { id: 'policy' });
  const pending = dataTable('pending-updates', ['Tag', 'New digest', 'Seen', 'Applies', 'Why held'],
    'No update is held back.');
  const events = h('ul', { id: 'device-events', class: 'events' });
  const noEvents = emptyNote('No event yet.');

  const rollbackTo = (button, version) => act(button,
    () => request('POST', base + '/target-state/rollback', { version }),
    (answer) => `Rolled back to version ${version}: the device's target is now version ${answer.version}.`);

  return {
    name: 'device',
    title: 'Device',
    attrs: { 'data-uuid': uuid },
    root: [h('h1', {}, title), h('p', { class: 'mono sub' }, uuid), summary,
      panel('Services', services.box), panel('Target history', history, noHistory),
      panel('Update policy', policy), panel('Pending updates', h('div', { id: 'pending' }, pending.box)),
      panel('Events', events, noEvents)],
    async refresh() {
      const [status, versions, policyAnswer, pendingAnswer, eventAnswer] = await Promise.allSettled([
        get('/status/devices/' + seg(uuid)),
        get(base + '/target-state/history?limit=20'),
        get(base + '/update-policy'),
        get(base + '/pending-updates'),
        get('/events' + queryString({ device: uuid, limit: 20 })),
      ]);
      let current = null;
      if (status.status === 'fulfilled') {
        const device = status.value;
        title.textContent = device.deviceName || device.uuid;
        document.title = `${device.deviceName || shortId(uuid)} · pinion`;
        current = device.targetVersion ?? null;
        show(summary, device, deviceSummary);
        services.fill(device.services || [], (s) => `${s.app}/${s.service}`, serviceRow);
      }
      if (versions.status === 'fulfilled') {
        const list = versions.value.versions || [];
        if (current === null && list.length) current = list[0].version;
        fillList(history, noHistory, list.map((version) => ({ version, current: version.version === current })),
          (item) => item.version.version, (item) => historyItem(item, rollbackTo));
      }
      if (policyAnswer.status === 'fulfilled') show(policy, policyAnswer.value, policyFacts);
      if (pendingAnswer.status === 'fulfilled') {
        pending.fill(pendingAnswer.value.pendingUpdates || [], (u) => u.reference + u.digest, pendingRow);
      }
      if (eventAnswer.status === 'fulfilled') {
        fillList(events, noEvents, eventAnswer.value.events || [], (e) => e.id, eventItem);
      }
      const failed = [status, versions, policyAnswer, pendingAnswer, eventAnswer].find((r) => r.status === 'rejected');
      if (failed) throw failed.reason;
    },
  };
}

function deviceSummary(device) {
  return h('dl', { class: 'facts' },
    fact('Fleet', device.fleet ? fleetLink(device.fleet) : 'none'),
    fact('Labels', labelChips(device.labels) || 'none'),
    fact('Connectivity', stateBadge(device.connectivity), ' ',
      device.lastSeen ? ['last seen ', when(device.lastSeen)] : 'never seen'),
    fact('Sync', stateBadge(device.sync), device.reason ? h('div', { class: 'reason' }, device.reason) : null),
    fact('Target', `version ${device.targetVersion ?? '—'}, from `, sourceText(device.source)),
    fact('Agent', device.agentVersion || 'unknown'),
    fact('Last report', when(device.reportedAt, 'none yet')));
}

function serviceRow(service) {
  return h('tr', { class: service.differs ? 'differs' : null },
    h('td', {}, h('span', { class: 'svc-name' }, service.service)),
    h('td', {}, service.app),
    h('td', { class: 'mono', title: service.targetImage || '' }, targetText(service, shortImage) || '—'),
    h('td', { class: 'mono running', title: service.runningImage || '' },
      service.runningImage ? shortImage(service.runningImage) : 'not running'),
    h('td', {}, service.status || dash()),
    h('td', {}, service.probation || dash()),
    h('td', { class: 'wrap reason' }, service.error || ''));
}

function historyItem({ version, current }, rollbackTo) {
  const images = version.images || [];
  return h('li', { class: ['history-item', current && 'current'], 'data-version': version.version },
    h('div', { class: 'history-head' },
      h('b', {}, `v${version.version}`),
      current ? stateBadge('current') : null,
      when(version.createdAt),
      h('span', { class: 'muted' }, version.source || ''),
      current ? null : h('button', {
        type: 'button', class: 'secondary small', 'data-action': 'rollback',
        on: { click: (event) => rollbackTo(event.currentTarget, version.version) },
      }, `Roll back to v${version.version}`)),
    h('div', { class: 'history-images' }, images.map((image) => h('div', { class: 'svc' },
      h('span', { class: 'svc-name' }, `${image.app}/${image.service}`), ' ',
      h('span', { class: 'mono', title: image.imageName || '' },
        image.digest ? shortDigest(image.digest) : shortImage(image.imageName)),
      image.requested && !image.requested.includes('@')
        ? h('span', { class: 'muted', title: image.requested }, ` from ${shortImage(image.requested)}`) : null))));
}

function policyFacts(answer) {
  const policy = answer.policy || {};
  return h('dl', { class: 'facts' },
    fact('Set by', { device: 'the device', fleet: 'its fleet', default: 'the server default' }[answer.source] || answer.source),
    fact('Moved tags', policy.autoUpdate === false ? 'recorded only (autoUpdate off)' : 'applied (autoUpdate on)'),
    fact('Update window', windowText(policy.updateWindow) || 'any time'));
}

function pendingRow(update) {
  return h('tr', {},
    h('td', { class: 'mono' }, update.reference),
    h('td', { class: 'mono', title: update.digest || '' }, shortDigest(update.digest)),
    h('td', {}, when(update.detectedAt)),
    h('td', {}, when(update.applyAfter, 'never by itself')),
    h('td', {}, update.reason));
}

// ------------------------------------------------------------------ fleets

function fleetsView() {
  const table = dataTable('fleets',
    ['Fleet', 'Release', 'Devices', 'Online', 'On release', 'In rollout', 'Pinned', 'Description'],
    'No fleet yet (POST /api/v1/fleets makes one).');
  return {
    name: 'fleets',
    title: 'Fleets',
    root: [h('h1', {}, 'Fleets'), table.box],
    async refresh() {
      const answer = await get('/fleets');
      table.fill(answer.fleets || [], (f) => f.name, fleetRow);
    },
  };
}

function fleetRow(fleet) {
  const devices = fleet.devices || {};
  return h('tr', { 'data-fleet': fleet.name },
    h('td', {}, fleetLink(fleet.name, 'fleet-link')),
    h('td', {}, fleet.release ? `release ${fleet.release}` : dash()),
    h('td', {}, h('a', { href: route('devices') + queryString({ fleet: fleet.name }) }, String(devices.total ?? 0))),
    ['online', 'onRelease', 'inRollout', 'pinned'].map((count) => h('td', {}, String(devices[count] ?? 0))),
    h('td', { class: 'wrap' }, fleet.description || ''));
}

// ------------------------------------------------------------------ one fleet

function fleetView(name) {
  const base = '/fleets/' + seg(name);
  const description = h('p', { class: 'muted' });
  const summary = h('div', { id: 'fleet-summary' });
  const releases = dataTable('releases', ['Release', 'Images', 'Made', 'Source'], 'No release yet: make one below.');
  const rollouts = dataTable('rollouts', ['Rollout', 'Release', 'State', 'Wave', 'Failed', 'Started', 'Updated'],
    'No rollout yet.');
  const events = h('ul', { id: 'fleet-events', class: 'events' });
  const noEvents = emptyNote('No event yet.');
  const rolloutForm = makeRolloutForm(name);
  const releaseForm = makeReleaseForm(name, (release) => rolloutForm.prefer(release.id));
  const imagesOf = new Map(); // release id → its images: releases never change

  return {
    name: 'fleet',
    title: name,
    attrs: { 'data-fleet': name },
    root: [h('h1', {}, 'Fleet ', h('span', {}, name)), description, summary,
      panel('Releases', releases.box), panel('New release', releaseForm),
      panel('Roll out a release', rolloutForm.root), panel('Rollouts', rollouts.box),
      panel('Events', events, noEvents)],
    async refresh() {
      const [fleet, releaseList, rolloutList, eventList] = await Promise.all([
        get(base), get(base + '/releases'), get(base + '/rollouts'),
        get('/events' + queryString({ fleet: name, limit: 20 })),
      ]);
      const list = releaseList.releases || [];
      await loadReleaseImages(base, list, imagesOf);
      description.textContent = fleet.description || '';
      show(summary, fleet, fleetSummary);
      const rows = list.map((release) => ({
        release, current: release.id === fleet.release, images: imagesOf.get(release.id),
      }));
      releases.fill(rows, (item) => item.release.id, releaseRow);
      rolloutForm.update(list, fleet.rolloutPlan);
      rollouts.fill(rolloutList.rollouts || [], (r) => r.id, rolloutRow);
      fillList(events, noEvents, eventList.events || [], (e) => e.id, eventItem);
    },
  };
}

function fleetSummary(fleet) {
  const devices = fleet.devices || {};
  const policy = fleet.updatePolicy;
  return h('dl', { class: 'facts' },
    fact('Release', fleet.release ? `release ${fleet.release}` : 'none yet'),
    fact('Devices', h('a', { href: route('devices') + queryString({ fleet: fleet.name }) }, String(devices.total ?? 0)),
      ` · ${devices.online ?? 0} online · ${devices.onRelease ?? 0} on the release · `,
      `${devices.inRollout ?? 0} in a rollout · ${devices.pinned ?? 0} pinned`),
    fact('Moved tags', !policy ? 'server default policy'
      : [policy.autoUpdate === false ? 'recorded only' : 'rolled out', windowText(policy.updateWindow)]
        .filter(Boolean).join(', ')),
    planFacts(fleet.rolloutPlan));
}

async function loadReleaseImages(base, releases, imagesOf) {
  const missing = releases.slice(0, RELEASES_WITH_IMAGES).filter((release) => !imagesOf.has(release.id));
  const answers = await Promise.allSettled(missing.map((release) => get(`${base}/releases/${seg(release.id)}`)));
  answers.forEach((answer, i) => {
    if (answer.status === 'fulfilled') imagesOf.set(missing[i].id, releaseImages(answer.value));
  });
}

function releaseImages(release) {
  const images = [];
  for (const [appKey, app] of keyedEntries(release.apps)) {
    for (const [serviceKey, service] of keyedEntries(app && app.services)) {
      const resolution = (service && service.imageResolution) || {};
      images.push({
        service: (service && service.serviceName) || serviceKey, app: (app && app.appName) || appKey,
        image: (service && service.imageName) || '', requested: resolution.requested || null,
        digest: resolution.digest || null,
      });
    }
  }
  return images;
}

function releaseRow({ release, current, images }) {
  const imageLines = images
    ? images.map((image) => h('div', { class: 'svc' },
      h('span', { class: 'svc-name' }, image.service), ' ',
      h('span', { class: 'mono', title: image.requested || image.image },
        shortImage((image.requested || image.image).split('@')[0])),
      ' ', h('span', { class: 'mono muted', title: image.digest || image.image }, shortDigest(image.digest || image.image))))
    : (release.references || []).map((reference) => h('div', { class: 'mono' }, reference));
  return h('tr', { 'data-release': release.id, class: current ? 'current' : null },
    h('td', {}, h('b', {}, `#${release.id}`), current ? [' ', stateBadge('current')] : null),
    h('td', {}, imageLines.length ? imageLines : dash()),
    h('td', {}, when(release.createdAt)),
    h('td', { class: 'wrap' }, release.source || '', release.note ? h('div', { class: 'sub' }, release.note) : null));
}

function rolloutRow(rollout) {
  const waves = (rollout.waves || []).length;
  return h('tr', { 'data-rollout': rollout.id },
    h('td', {}, rolloutLink(rollout.fleet, rollout.id, `#${rollout.id}`, 'rollout-link')),
    h('td', {}, rollout.previousRelease ? `${rollout.previousRelease} → ${rollout.release}` : String(rollout.release)),
    h('td', {}, stateBadge(rollout.state)),
    h('td', {}, rollout.currentWave ? `${rollout.currentWave} of ${waves}` : `– of ${waves}`),
    h('td', { class: rollout.failed ? 'state-text-failed' : null }, String(rollout.failed || 0)),
    h('td', {}, when(rollout.createdAt)),
    h('td', {}, when(rollout.updatedAt)));
}

function makeReleaseForm(fleet, made) {
  const format = h('select', { id: 'release-format' },
    h('option', { value: 'json' }, 'JSON target state ({"apps": …})'),
    h('option', { value: 'compose' }, 'docker-compose file'));
  const body = h('textarea', { id: 'release-body', rows: 8, spellcheck: 'false', placeholder: RELEASE_EXAMPLES.json });
  const allowTags = h('input', { id: 'release-allow-tags', type: 'checkbox' });
  const create = h('button', { id: 'release-create', type: 'submit' }, 'Make release');
  format.addEventListener('change', () => body.setAttribute('placeholder', RELEASE_EXAMPLES[format.value]));
  const form = h('form', { id: 'release-form', class: 'stack-form' },
    field('Format', format), field('Release', body),
    checkField('Keep tags the registry cannot pin (allowTags)', allowTags),
    h('div', { class: 'actions' }, create));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    if (!body.value.trim()) {
      flash('Write the release first: a JSON target state or a compose file.', true);
      return;
    }
    const type = format.value === 'compose' ? 'application/yaml' : 'application/json';
    const path = `/fleets/${seg(fleet)}/releases` + (allowTags.checked ? '?allowTags=true' : '');
    const release = await act(create, async () => {
      const answer = await request('POST', path, body.value, type);
      made(answer);
      return answer;
    }, (answer) => {
      const resolution = answer.resolution;
      const pinned = resolution ? `, ${resolution.total - resolution.fallback} of ${resolution.total} images pinned` : '';
      return `Release ${answer.id} made${pinned}.`;
    });
    if (release) body.value = '';
  });
  return form;
}

function parseWaves(text) {
  return text.split(/[\s,]+/).filter(Boolean).map((token) => {
    const match = /^(\d{1,3})%?$/.exec(token);
    if (!match) throw new Error(`Waves: "${token}" is not a percent; write them like 1,10,50,100.`);
    return { percent: Number(match[1]) };
  });
}

function parseMaxFailures(text) {
  const max = {};
  for (const token of text.split(/[\s,]+/).filter(Boolean)) {
    const match = /^(\d+)(%?)$/.exec(token);
    if (!match) throw new Error(`Max failures: "${token}" is neither a count (2) nor a percent (5%).`);
    max[match[2] ? 'percent' : 'count'] = Number(match[1]);
  }
  return max;
}

/**
 * The rollout form: a dry run shows each wave's devices; only then a confirm button
 * appears, and it starts exactly what the dry run showed (a change hides it again).
 */
function makeRolloutForm(fleet) {
  const path = `/fleets/${seg(fleet)}/rollouts`;
  const release = h('select', { id: 'rollout-release' });
  const waves = textInput('rollout-waves', '1,10,50,100');
  const bake = textInput('rollout-bake', '15m');
  const success = textInput('rollout-success', '100');
  const maxFailures = textInput('rollout-max-failures', '0');
  const onFailure = h('select', { id: 'rollout-on-failure' }, h('option', { value: '' }, 'as the fleet plan says'),
    h('option', { value: 'pause' }, 'pause'), h('option', { value: 'rollback' }, 'roll back'));
  const supersede = h('input', { id: 'rollout-supersede', type: 'checkbox' });
  const dryRun = h('button', { id: 'rollout-dryrun', type: 'submit', class: 'secondary' }, 'Dry run: show the waves');
  const result = h('div', { id: 'dryrun-result' });
  const startButton = h('button', { id: 'rollout-confirm', type: 'button', hidden: true }, 'Start the rollout');
  let planned = null; // the body the dry run answered for, as JSON
  let preferred = null;
  let chosen = false;

  const readBody = () => {
    if (!release.value) throw new Error('There is no release to roll out: make one first.');
    const body = { release: Number(release.value) };
    if (waves.value.trim()) body.waves = parseWaves(waves.value);
    const bakeText = bake.value.trim();
    if (bakeText) body.bakeTime = /^\d+$/.test(bakeText) ? Number(bakeText) : bakeText;
    const successText = success.value.trim().replace(/%$/, '');
    if (successText) {
      if (!/^\d{1,3}$/.test(successText)) throw new Error('Success percent: a whole number from 1 to 100.');
      body.successPercent = Number(successText);
    }
    if (maxFailures.value.trim()) body.maxFailures = parseMaxFailures(maxFailures.value);
    if (onFailure.value) body.onFailure = onFailure.value;
    if (supersede.checked) body.supersede = true;
    return body;
  };
  const currentBody = () => {
    try {
      return JSON.stringify(readBody());
    } catch (error) {
      return null;
    }
  };
  const checkStale = () => {
    if (planned === null) return;
    const stale = currentBody() !== planned;
    startButton.hidden = stale;
    result.classList.toggle('stale', stale);
  };

  const form = h('form', { id: 'rollout-form', class: 'form-grid' },
    field('Release', release),
    field('Waves (%)', waves, 'cumulative percents of the fleet; empty: the fleet plan'),
    field('Bake time', bake, 'e.g. 0s, 15m, 2h'),
    field('Success percent', success),
    field('Max failures', maxFailures, 'a count (2), a percent (5%) or both'),
    field('On failure', onFailure),
    checkField('Supersede the running rollout at its wave boundary', supersede),
    h('div', { class: 'actions' }, dryRun));
  release.addEventListener('change', () => { chosen = true; });
  form.addEventListener('input', checkStale);
  form.addEventListener('change', checkStale);
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    let body;
    try {
      body = readBody();
    } catch (error) {
      flash(error.message, true);
      return;
    }
    const answer = await act(dryRun, () => request('POST', path, { ...body, dryRun: true }), (plan) => {
      const devices = (plan.waves || []).reduce((sum, wave) => sum + (wave.count || 0), 0);
      return `Dry run: ${plural((plan.waves || []).length, 'wave')}, ${plural(devices, 'device')}. Nothing is started yet.`;
    }, { refresh: false });
    if (!answer) return;
    planned = JSON.stringify(body);
    result.classList.remove('stale');
    result.replaceChildren(...(answer.waves || []).map(dryRunWave));
    startButton.textContent = `Start the rollout of release ${body.release}`;
    startButton.hidden = false;
  });
  startButton.addEventListener('click', async () => {
    if (currentBody() !== planned) {
      checkStale();
      flash('The form changed since the dry run: run it again.', true);
      return;
    }
    const rollout = await act(startButton, () => request('POST', path, JSON.parse(planned)),
      (started) => `Rollout ${started.id} of release ${started.release} started.`, { refresh: false });
    if (rollout) location.hash = route('fleet', fleet, 'rollout', rollout.id);
  });

  return {
    root: [form, result, h('div', { class: 'actions' }, startButton)],
    /** Picks a release made just now, unless the operator chose one. */
    prefer(id) {
      preferred = String(id);
      chosen = false;
    },
    /** New releases in the select, the fleet plan in the placeholders. */
    update(releases, plan) {
      const options = releases.map((r) => [String(r.id), `release ${r.id}${r.note ? ` (${r.note})` : ''}`]);
      const newest = options.length ? options[0][0] : '';
      const wanted = chosen ? release.value : preferred && options.some(([v]) => v === preferred) ? preferred : newest;
      setOptions(release, options, wanted);
      if (plan) {
        waves.setAttribute('placeholder', `fleet plan: ${(plan.waves || []).map(waveSpecText).join(', ')}`);
        bake.setAttribute('placeholder', `fleet plan: ${plan.bakeTime}`);
        success.setAttribute('placeholder', `fleet plan: ${plan.successPercent}`);
        maxFailures.setAttribute('placeholder', `fleet plan: stop at ${maxFailuresText(plan.maxFailures)}`);
      }
      checkStale();
    },
  };
}

function dryRunWave(wave) {
  const devices = wave.devices || [];
  const shown = devices.slice(0, MAX_ROWS);
  return h('div', { class: 'dryrun-wave', 'data-wave': wave.wave },
    h('h4', {}, `Wave ${wave.wave}: ${plural(wave.count ?? devices.length, 'device')}`),
    h('ul', { class: 'uuid-list' }, shown.map((uuid) => h('li', {}, deviceLink(uuid, uuid, 'mono')))),
    devices.length > shown.length ? h('p', { class: 'muted' }, `and ${devices.length - shown.length} more`) : null);
}

// ------------------------------------------------------------------ one rollout

function rolloutView(fleet, id) {
  const path = `/fleets/${seg(fleet)}/rollouts/${seg(id)}`;
  const summary = h('div', { id: 'rollout-summary' });
  const actions = h('div', { class: 'actions', id: 'rollout-actions' });
  const waves = h('div', { class: 'cards waves', id: 'waves' });
  const devices = dataTable('rollout-devices', ['Device', 'Wave', 'State', 'Reason', 'Given the release'],
    'No device in this rollout.');
  const devicesNote = h('p', { class: 'muted', hidden: true });

  const command = (button, action) => act(button,
    () => request('POST', `${path}/${action === 'abort-rollback' ? 'abort' : action}`,
      action.startsWith('abort') ? { rollback: action === 'abort-rollback' } : undefined),
    (answer) => `Rollout ${answer.id}: ${ACTION_LABELS[action].toLowerCase()}; it is now ${answer.state}.`);
  const buttons = (state) => {
    const allowed = ROLLOUT_ACTIONS[state] || [];
    if (!allowed.length) return h('p', { class: 'muted' }, 'This rollout is over: nothing left to do.');
    return allowed.map((action) => h('button', {
      type: 'button', 'data-action': action, class: action.startsWith('abort') ? 'danger' : 'secondary',
      on: { click: (event) => command(event.currentTarget, action) },
    }, ACTION_LABELS[action]));
  };

  return {
    name: 'rollout',
    title: `Rollout ${id}`,
    attrs: { 'data-rollout': id, 'data-fleet': fleet },
    root: [h('h1', {}, fleetLink(fleet), ' · rollout ', h('span', {}, id)), summary, actions,
      panel('Waves', waves), panel('Devices', devices.box, devicesNote)],
    async refresh() {
      const rollout = await get(path);
      const { devices: rows = [], waves: counts = [], ...rest } = rollout;
      show(summary, { ...rest, waveCount: counts.length }, rolloutSummary);
      show(actions, rollout.state, buttons);
      const specs = (rollout.plan && rollout.plan.waves) || [];
      const cards = counts.map((wave, i) => ({ ...wave, current: wave.wave === rollout.currentWave, spec: specs[i] }));
      fillList(waves, null, cards, (wave) => wave.wave, waveCard);
      const shown = rowsWorthShowing(rows);
      devices.fill(shown, (d) => d.uuid, rolloutDeviceRow);
      devicesNote.hidden = shown.length === rows.length;
      devicesNote.textContent = `Showing ${shown.length} of ${rows.length} devices: failed, updating and deferred first.`;
    },
  };
}

function rolloutSummary(rollout) {
  return h('dl', { class: 'facts' },
    fact('State', stateBadge(rollout.state, 'rollout-state')),
    fact('Release', rollout.previousRelease ? `${rollout.previousRelease} → ${rollout.release}` : `${rollout.release}`),
    fact('Wave', rollout.currentWave ? `${rollout.currentWave} of ${rollout.waveCount}` : `not started (${rollout.waveCount})`,
      rollout.waveStartedAt ? [', started ', when(rollout.waveStartedAt)] : null),
    fact('Failed devices', String(rollout.failed || 0)),
    rollout.supersededBy ? fact('Superseded by', rolloutLink(rollout.fleet, rollout.supersededBy)) : null,
    planFacts(rollout.plan),
    fact('Started', when(rollout.createdAt)),
    fact('Last change', when(rollout.updatedAt)));
}

function waveCard(wave) {
  const total = waveTotal(wave);
  const healthy = wave.healthy || 0;
  return h('article', { class: ['card', 'wave', wave.current && 'current'], 'data-wave': wave.wave },
    h('header', { class: 'card-head' },
      h('h3', {}, `Wave ${wave.wave}`),
      wave.spec ? h('span', { class: 'muted' }, waveSpecText(wave.spec)) : null,
      wave.current ? stateBadge('current') : null),
    h('progress', { max: total || 1, value: healthy, 'aria-label': `${healthy} of ${total} healthy` }),
    h('p', { class: 'wave-count' }, `${healthy}/${total} healthy`),
    h('ul', { class: 'counts' }, WAVE_STATES.map((state) => h('li', { class: wave[state] ? null : 'zero', 'data-state': state },
      h('span', { class: 'dot state-' + state }), state, ' ', h('b', {}, String(wave[state] || 0))))));
}

const ROW_PRIORITY = { failed: 0, updating: 1, deferred: 2, pending: 3, healthy: 4 };

/** All rows, or for a big rollout the ones needing a look first. */
function rowsWorthShowing(rows) {
  if (rows.length <= MAX_ROWS) return rows;
  const rank = (row) => ROW_PRIORITY[row.state] ?? 5;
  return [...rows].sort((a, b) => rank(a) - rank(b) || a.wave - b.wave).slice(0, MAX_ROWS);
}

function rolloutDeviceRow(device) {
  return h('tr', { 'data-uuid': device.uuid },
    h('td', {}, deviceLink(device.uuid, device.uuid, 'mono')),
    h('td', {}, String(device.wave)),
    h('td', {}, stateBadge(device.state)),
    h('td', { class: 'wrap reason' }, device.reason || ''),
    h('td', {}, device.hasRelease ? 'yes' : 'no'));
}

// ------------------------------------------------------------------ images

function imagesView() {
  const table = dataTable('images', ['Reference', 'Digest', 'Last check', 'Digest changed', 'Last error', 'Followed by'],
    'Nothing follows a tag: every target names digests.');
  return {
    name: 'images',
    title: 'Images',
    root: [h('h1', {}, 'Images'), table.box],
    async refresh() {
      const answer = await get('/images');
      table.fill(answer.images || [], (image) => image.reference, imageRow);
    },
  };
}

function imageRow(image) {
  const devices = image.devices || [];
  return h('tr', {},
    h('td', { class: 'mono' }, image.reference),
    h('td', { class: 'mono', title: image.digest || '' }, image.digest ? shortDigest(image.digest) : dash()),
    h('td', {}, when(image.lastChecked, 'never')),
    h('td', {}, when(image.lastChanged)),
    h('td', { class: 'wrap' }, image.lastError
      ? [h('span', { class: 'state-text-failed' }, image.lastError), ' ', when(image.lastErrorAt)] : dash()),
    h('td', {}, (image.fleets || []).map((name) => [fleetLink(name), ' ']), plural(devices.length, 'device')));
}

// ------------------------------------------------------------------ keys and registries

function keysView() {
  const description = textInput('key-description', 'e.g. Berlin gateways, batch 3');
  const fleet = h('select', { id: 'key-fleet' });
  const create = h('button', { id: 'key-create', type: 'submit' }, 'Make key');
  const secretBox = h('div', { id: 'key-secret-box', class: 'secret', hidden: true });
  const keys = dataTable('keys', ['Key', 'Description', 'Fleet', 'Made', 'Expires', 'Registered', 'State', ''],
    'No provisioning key yet.');
  const host = textInput('registry-host', 'registry.lan:5000');
  const username = textInput('registry-username', '');
  const password = h('input', { id: 'registry-password', type: 'password', autocomplete: 'new-password' });
  const save = h('button', { id: 'registry-save', type: 'submit' }, 'Save credentials');
  const registries = dataTable('registries', ['Registry', 'User name', 'For', 'Updated', ''],
    'No registry credentials stored.');
  setOptions(fleet, [['', 'no fleet']], '');

  const showSecret = (answer) => {
    const secret = h('code', { id: 'key-secret' }, answer.key);
    const done = h('button', { type: 'button', class: 'secondary small' }, 'Done: hide it');
    done.addEventListener('click', () => {
      secretBox.replaceChildren();
      secretBox.hidden = true;
    });
    secretBox.replaceChildren(
      h('p', {}, h('strong', {}, `Key ${answer.id}`), ': the secret is shown this once only. Store it now ',
        '(the agent’s provisioning_key).'),
      h('div', { class: 'secret-line' }, secret, done));
    secretBox.hidden = false;
  };

  const keyForm = h('form', { class: 'form-grid', id: 'key-form' },
    field('Description', description), field('Fleet its devices join', fleet),
    h('div', { class: 'actions' }, create));
  keyForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const body = {};
    if (description.value.trim()) body.description = description.value.trim();
    if (fleet.value) body.fleet = fleet.value;
    const answer = await act(create, () => request('POST', '/provisioning-keys', body),
      (key) => `Provisioning key ${key.id} made.`);
    if (answer) {
      showSecret(answer);
      description.value = '';
    }
  });

  const registryForm = h('form', { class: 'form-grid', id: 'registry-form', autocomplete: 'off' },
    field('Registry host', host), field('User name', username), field('Password or token', password),
    h('div', { class: 'actions' }, save));
  registryForm.addEventListener('submit', async (event) => {
    event.preventDefault();
    const hostName = host.value.trim();
    if (!hostName) {
      flash('Name the registry host, as in an image reference (registry.lan:5000).', true);
      return;
    }
    const answer = await act(save,
      () => request('PUT', `/registries/${seg(hostName)}/credentials`, { username: username.value, password: password.value }),
      (saved) => `Credentials for ${saved.host} saved (user ${saved.username}).`);
    password.value = '';
    if (answer) {
      host.value = '';
      username.value = '';
    }
  });

  const revoke = (button, id) => act(button, () => request('DELETE', `/provisioning-keys/${seg(id)}`),
    () => `Provisioning key ${id} revoked.`);
  const forget = (button, entry) => act(button,
    () => request('DELETE', `/registries/${seg(entry.host)}/credentials` + queryString({ device: entry.device })),
    () => `Credentials for ${entry.host}${entry.device ? ` (device ${entry.device})` : ''} deleted.`);

  return {
    name: 'keys',
    title: 'Keys',
    root: [h('h1', {}, 'Keys'),
      panel('Provisioning keys', h('p', { class: 'hint' }, 'An agent registers with one of these.'),
        keyForm, secretBox, keys.box),
      panel('Registry credentials', h('p', { class: 'hint' },
        'Given to the devices that pull from the registry. A password goes in and never comes out.'),
      registryForm, registries.box)],
    async refresh() {
      const [keyList, registryList, fleets] = await Promise.all([
        get('/provisioning-keys'), get('/registries'), get('/fleets'),
      ]);
      setOptions(fleet, [['', 'no fleet'], ...(fleets.fleets || []).map((f) => [f.name, f.name])], fleet.value);
      keys.fill(keyList.provisioningKeys || [], (key) => key.id, (key) => keyRow(key, revoke));
      registries.fill(registryList.registries || [], (entry) => `${entry.host} ${entry.device || ''}`,
        (entry) => registryRow(entry, forget));
    },
  };
}

function keyState(key) {
  if (key.revokedAt) return 'revoked';
  if (key.expiresAt && Date.parse(key.expiresAt) < Date.now()) return 'expired';
  return 'active';
}

function keyRow(key, revoke) {
  const state = keyState(key);
  return h('tr', { 'data-key': key.id, class: state === 'active' ? null : 'inactive' },
    h('td', { class: 'mono' }, key.id),
    h('td', { class: 'wrap' }, key.description || '',
      key.device ? h('div', { class: 'sub' }, 'for ', deviceLink(key.device, shortId(key.device), 'mono')) : null,
      key.singleUse ? h('div', { class: 'sub' }, 'single use') : null),
    h('td', {}, key.fleet ? fleetLink(key.fleet) : dash()),
    h('td', {}, when(key.createdAt)),
    h('td', {}, when(key.expiresAt, 'never')),
    h('td', {}, String(key.devicesRegistered || 0)),
    h('td', {}, stateBadge(state), key.revokedAt ? [' ', when(key.revokedAt)] : null),
    h('td', {}, state === 'revoked' ? null : h('button', {
      type: 'button', class: 'danger small', 'data-action': 'revoke',
      on: { click: (event) => revoke(event.currentTarget, key.id) },
    }, 'Revoke')));
}

function registryRow(entry, forget) {
  return h('tr', { 'data-host': entry.host },
    h('td', { class: 'mono' }, entry.host),
    h('td', {}, entry.username),
    h('td', {}, entry.device ? deviceLink(entry.device, shortId(entry.device), 'mono') : 'every device'),
    h('td', {}, when(entry.updatedAt)),
    h('td', {}, h('button', {
      type: 'button', class: 'danger small', 'data-action': 'delete-registry',
      on: { click: (event) => forget(event.currentTarget, entry) },
    }, 'Delete')));
}

// ------------------------------------------------------------------ not found

function notFoundView() {
  return {
    name: 'not-found',
    title: 'Not found',
    root: [h('h1', {}, 'No page here'), h('p', {}, h('a', { href: '#/' }, 'Back to the overview'))],
    async refresh() {},
  };
}

// ------------------------------------------------------------------ router

function decode(part) {
  try {
    return decodeURIComponent(part);
  } catch (error) {
    return part;
  }
}

/** '#/devices?fleet=lab' → {path: 'devices', parts: ['devices'], query: {fleet: 'lab'}} */
function parseHash() {
  const raw = location.hash.replace(/^#\/?/, '');
  const mark = raw.indexOf('?');
  const path = mark >= 0 ? raw.slice(0, mark) : raw;
  const query = {};
  for (const pair of (mark >= 0 ? raw.slice(mark + 1) : '').split('&')) {
    if (!pair) continue;
    const equals = pair.indexOf('=');
    const name = decode(equals >= 0 ? pair.slice(0, equals) : pair);
    query[name] = equals >= 0 ? decode(pair.slice(equals + 1)) : '';
  }
  return { path, parts: path.split('/').filter(Boolean).map(decode), query };
}

function viewFor(parts, query) {
  const [first, second, third, fourth] = parts;
  if (parts.length === 0) return overviewView();
  if (first === 'devices' && parts.length === 1) return devicesView(query);
  if (first === 'device' && parts.length === 2) return deviceView(second);
  if (first === 'fleets' && parts.length === 1) return fleetsView();
  if (first === 'fleet' && parts.length === 2) return fleetView(second);
  if (first === 'fleet' && parts.length === 4 && third === 'rollout') return rolloutView(second, fourth);
  if (first === 'images' && parts.length === 1) return imagesView();
  if (first === 'keys' && parts.length === 1) return keysView();
  return notFoundView();
}

/** Shows the view the hash names: the same page only takes its new query. */
function onRoute() {
  if (!app.signedIn) return;
  const { path, parts, query } = parseHash();
  if (app.view && app.view.path === path) {
    if (app.view.update) app.view.update(query);
    refreshView();
    return;
  }
  if (Date.now() - (app.flashAt || 0) > FLASH_FOLLOWS_MS) flash('');
  const view = viewFor(parts, query);
  view.path = path;
  app.view = view;
  const main = resetMain(view.name);
  for (const [name, value] of Object.entries(view.attrs || {})) main.setAttribute(name, value);
  main.replaceChildren(...nodes(view.root));
  document.title = `${view.title} · pinion`;
  markNav(parts[0] || '');
  window.scrollTo(0, 0);
  refreshView();
}

/** Changes the hash without a history entry (filters being typed) and follows it. */
function replaceHash(hash) {
  if (location.hash === hash) return;
  history.replaceState(null, '', hash);
  onRoute();
}

function resetMain(viewName) {
  const main = document.getElementById('view');
  for (const attribute of [...main.attributes]) {
    if (attribute.name.startsWith('data-')) main.removeAttribute(attribute.name);
  }
  main.setAttribute('data-view', viewName);
  return main;
}

function markNav(section) {
  const current = '#/' + ({ device: 'devices', fleet: 'fleets' }[section] || section);
  for (const link of document.querySelectorAll('#nav a')) {
    if (link.getAttribute('href') === current) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
}

// ------------------------------------------------------------------ refresh

/** Refreshes the view on screen; a call during a refresh runs one more after it. */
function refreshView() {
  const view = app.view;
  if (!app.signedIn || !view) return Promise.resolve();
  if (view.running) {
    view.again = true;
    return view.running;
  }
  view.running = (async () => {
    do {
      view.again = false;
      try {
        await view.refresh();
        if (view === app.view) {
          updateTimes();
          if (app.flashFromRefresh) flash('');
        }
      } catch (error) {
        if (view === app.view) {
          reportError(error);
          app.flashFromRefresh = app.signedIn;
        }
      }
    } while (view.again && view === app.view && app.signedIn);
    view.running = null;
  })();
  return view.running;
}

function startRefresh() {
  stopRefresh();
  app.timer = setInterval(() => {
    if (!document.hidden) refreshView();
  }, REFRESH_MS);
}

function stopRefresh() {
  clearInterval(app.timer);
  app.timer = null;
}

// ------------------------------------------------------------------ session

function showSignin(message) {
  app.signedIn = false;
  app.view = null;
  stopRefresh();
  document.getElementById('nav').hidden = true;
  document.title = 'Sign in · pinion';
  const token = h('input', {
    id: 'signin-token', type: 'password', autocomplete: 'current-password', required: true, spellcheck: 'false',
  });
  const submit = h('button', { id: 'signin-submit', type: 'submit' }, 'Sign in');
  const error = h('p', { id: 'signin-error', class: 'error', role: 'alert' }, message || '');
  const form = h('form', { class: 'card signin' },
    h('h1', {}, 'Sign in'),
    h('p', { class: 'hint' }, 'With the server’s admin token. The session lasts until it expires or you sign out.'),
    field('Admin token', token), error, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    error.textContent = '';
    submit.disabled = true;
    try {
      await request('POST', '/session', { token: token.value });
      token.value = '';
      enterApp();
    } catch (failure) {
      error.textContent = failure.message;
      token.select();
    } finally {
      submit.disabled = false;
    }
  });
  resetMain('signin').replaceChildren(form);
  token.focus();
}

/** Signed in: the nav, the auto refresh, and the view the hash asked for all along. */
function enterApp() {
  app.signedIn = true;
  document.getElementById('nav').hidden = false;
  startRefresh();
  onRoute();
}

async function signOut() {
  try {
    await request('DELETE', '/session');
    flash('Signed out.');
  } catch (error) {
    flash(error.message, true);
  }
  showSignin();
}

function boot() {
  window.addEventListener('hashchange', onRoute);
  document.getElementById('signout').addEventListener('click', signOut);
  document.getElementById('flash').addEventListener('click', () => flash(''));
  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) refreshView();
  });
  request('GET', '/session').then(enterApp, (error) => showSignin(error.status === 401 ? '' : error.message));
}

boot();
})();
