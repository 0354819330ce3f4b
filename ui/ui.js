// The ReReady deliveries page. It polls the JSON API beneath the page (at
// the page's own path, so any route prefix works) and builds every element
// with createElement and text nodes: no value that came from the API is
// ever parsed as HTML.
(function () {
	'use strict';

	const POLL_MS = 1000; // deliveries: new rows show within about a second
	const HIDDEN_POLL_MS = 5000; // while the tab is in the background
	const SLOW_EVERY = 5; // the queue and the summary at least every 5th poll
	const MAX_ROWS = 200; // deliveries kept on the page
	const TIMELINE_LIMIT = 1000;
	const PAGE = 100; // deliveries per page of a time range

	const $ = (id) => document.getElementById(id);

	// Outcomes in the order the server lists them; states with their rank
	// along a return's life (from the page's filters, filled by the server).
	const OUTCOMES = Array.from($('f-outcome').options).map((o) => o.value).filter(Boolean);
	const STATES = Array.from($('states').options).map((o) => ({ name: o.value, rank: Number(o.dataset.rank) }));
	const RANK = new Map(STATES.map((s) => [s.name, s.rank]));
	const FINAL_RANK = Math.max(...STATES.map((s) => s.rank));
	// What the chart counts under an outcome, where the outcome's name alone
	// would say less: queued is a delivery stored as it arrived; retrying,
	// a failed attempt to redeliver a queued one.
	const CHART_LABEL = { queued: 'queued on arrival', retrying: 'redelivery failed, retrying' };
	const chartLabel = (o) => CHART_LABEL[o] || o;
	// Chart stacking order, bottom up.
	const STACK = ['forwarded', 'redelivered', 'replayed', 'observed', 'queued', 'retrying', 'rejected', 'dead'];
	const CHART_ORDER = STACK.filter((o) => OUTCOMES.includes(o)).concat(OUTCOMES.filter((o) => !STACK.includes(o)));

	const st = {
		filters: { return_id: '', state: '', outcome: '' },
		hideTest: false, // test events left out of the deliveries table (client-side)
		timeline: '',
		rows: [], // newest first
		lastSeq: 0,
		epoch: null,
		ticks: 0,
		timer: 0,
		busy: false,
		again: false,
		gen: 0,
		queueKey: '',
		online: null,
		drop: null, // { item } the open drop dialog is about
		dropFrom: '', // the data-key of the button that opened it
		range: { since: '', until: '' }, // a time range: older history, page by page
		cursor: '', // the range's next (older) page, from X-Reready-Next-Cursor
		detail: '', // the delivery whose detail is open
		confirm: null, // what confirming the open confirmation runs
		confirmFrom: null, // the button that opened it
		// What this gateway answers, found out when the page loads (null:
		// not yet known). An older gateway has none of these: the page
		// hides them.
		features: { history: null, replay: null, pause: null },
	};

	// ---- building elements -------------------------------------------------

	// h makes an element. props: class, text, on<event>, data (dataset) or
	// attributes; children: nodes or strings (appended as text).
	function h(tag, props, children) {
		const e = document.createElement(tag);
		setProps(e, props);
		append(e, children);
		return e;
	}

	const SVG = 'http://www.w3.org/2000/svg';
	function s(tag, props, children) {
		const e = document.createElementNS(SVG, tag);
		setProps(e, props);
		append(e, children);
		return e;
	}

	function setProps(e, props) {
		for (const [k, v] of Object.entries(props || {})) {
			if (v === undefined || v === null || v === false) continue;
			if (k === 'class') e.setAttribute('class', v);
			else if (k === 'text') e.textContent = String(v);
			else if (k === 'data') Object.assign(e.dataset, v);
			else if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
			else e.setAttribute(k, v === true ? '' : String(v));
		}
	}

	function append(e, children) {
		for (const c of [].concat(children === undefined ? [] : children)) {
			if (c === null || c === undefined || c === false) continue;
			e.append(c instanceof Node ? c : String(c));
		}
	}

	// cls keeps a server value usable as part of a class name.
	const cls = (v) => String(v).replace(/[^a-z0-9_-]/gi, '');

	const badge = (outcome) => h('span', { class: 'badge o-' + cls(outcome), text: outcome });

	// td is a cell: its label shows beside the value at phone width.
	function td(label, content, extra) {
		return h('td', Object.assign({ data: { label } }, extra || {}), h('span', { class: 'v' }, content));
	}

	function timeEl(iso) {
		if (!iso) return '—';
		const d = new Date(iso);
		if (isNaN(d)) return iso;
		const today = new Date().toDateString() === d.toDateString();
		const text = today ? d.toLocaleTimeString([], { hour12: false })
			: d.toLocaleString([], { hour12: false, month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', second: '2-digit' });
		return h('time', { datetime: iso, title: iso, text });
	}

	function ms(v) {
		if (typeof v !== 'number') return '—';
		return (v < 10 ? v.toFixed(1) : String(Math.round(v))) + ' ms';
	}

	// status shows what the sender got and, where it differs, the app's answer.
	function status(d) {
		if (!d.status) return '—';
		if (d.upstream_status && d.upstream_status !== d.status) return d.status + ' (app ' + d.upstream_status + ')';
		return String(d.status);
	}

	// testBadge marks a test event (test: true in its payload).
	const testBadge = (test) => test
		? h('span', { class: 'badge flag', text: 'test', title: 'A test event ("test": true in its payload, as ReReady\'s Test button sends), not a real return' })
		: '—';

	// rowData is a row's data attributes; data-test only on a test event,
	// which the style marks.
	const rowData = (data, test) => (test ? Object.assign(data, { test: 'true' }) : data);

	function returnButton(id) {
		if (!id) return '—';
		return h('button', {
			type: 'button', class: 'link', text: id,
			'aria-label': 'Timeline of return ' + id,
			onclick: () => openTimeline(id, true),
		});
	}

	// ---- talking to the API ----------------------------------------------------

	// API is where the API is: beneath the page's path, on its origin. Not
	// relative to the document: a page opened as http://user:pass@host/...
	// (behind basic_auth) keeps the credentials in its URL (document.URL;
	// location.href hides them), a relative URL inherits them, and fetch
	// refuses a URL that holds credentials. The browser sends the ones it
	// signed in with anyway.
	const API = new URL('api/', location.origin + location.pathname).href;

	async function api(path, opts) {
		const res = await fetch(API + path, Object.assign({
			credentials: 'same-origin', cache: 'no-store', headers: { Accept: 'application/json' },
		}, opts || {}));
		let body = null;
		try {
			body = await res.json();
		} catch (e) {
			body = null;
		}
		if (!res.ok) {
			const err = new Error(body && typeof body.error === 'string' ? body.error : 'HTTP ' + res.status);
			err.status = res.status;
			throw err;
		}
		return { body, res };
	}

	// postJSON posts a JSON body (or none) to the API, same-origin as every
	// change the page makes.
	function postJSON(path, body) {
		const opts = { method: 'POST' };
		if (body !== undefined) {
			opts.headers = { Accept: 'application/json', 'Content-Type': 'application/json' };
			opts.body = JSON.stringify(body);
		}
		return api(path, opts);
	}

	// compact leaves out the empty values of an object.
	const compact = (o) => Object.fromEntries(Object.entries(o).filter(([, v]) => v !== '' && v !== undefined && v !== null));

	function query(params) {
		const q = new URLSearchParams();
		for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) q.set(k, String(v));
		return q.toString();
	}

	// ---- the URL holds the filters, the time range, the open timeline and detail

	function readURL() {
		const q = new URLSearchParams(location.search);
		st.filters = { return_id: q.get('return_id') || '', state: q.get('state') || '', outcome: q.get('outcome') || '' };
		st.range = { since: q.get('since') || '', until: q.get('until') || '' };
		st.timeline = q.get('timeline') || '';
		st.detail = q.get('delivery') || '';
		st.hideTest = q.get('hide_test') === '1';
		$('f-hide-test').checked = st.hideTest;
		$('f-return').value = st.filters.return_id;
		$('f-state').value = st.filters.state;
		$('f-outcome').value = st.filters.outcome;
		$('f-since').value = st.range.since;
		$('f-until').value = st.range.until;
	}

	function writeURL(push) {
		const q = query(Object.assign({}, st.filters, st.range, { hide_test: st.hideTest ? '1' : '', timeline: st.timeline, delivery: st.detail }));
		const url = location.pathname + (q ? '?' + q : '');
		if (url !== location.pathname + location.search) history[push ? 'pushState' : 'replaceState'](null, '', url);
	}

	// ---- deliveries ----------------------------------------------------------

	async function pollDeliveries() {
		const gen = st.gen;
		const { body, res } = await api('deliveries?' + query(Object.assign({}, st.filters, { limit: MAX_ROWS, after: st.lastSeq || '' })));
		if (gen !== st.gen) return []; // the filters changed meanwhile
		const epoch = res.headers.get('X-Reready-Journal');
		if (st.epoch !== null && epoch !== st.epoch && st.lastSeq) {
			// Another process answers now (a restart): its sequence is new.
			st.epoch = epoch;
			resetRows();
			return pollDeliveries();
		}
		st.epoch = epoch;
		if (!Array.isArray(body) || body.length === 0) {
			if (!st.rendered) renderDeliveries(null);
			return [];
		}
		const full = !st.lastSeq || body.length >= MAX_ROWS;
		st.lastSeq = Math.max(st.lastSeq, body[0].seq);
		if (full) {
			st.rows = body;
			renderDeliveries(null, st.rendered ? body : []);
		} else {
			st.rows = body.concat(st.rows).slice(0, MAX_ROWS);
			renderDeliveries(body);
		}
		return body;
	}

	function deliveryRow(d, fresh) {
		return h('tr', { class: fresh ? 'fresh' : null, data: rowData({ seq: d.seq, outcome: cls(d.outcome) }, d.test) }, [
			td('Time', timeEl(d.time)),
			td('Outcome', [badge(d.outcome), d.reason ? h('span', { class: 'reason', text: d.reason }) : null]),
			td('Status', status(d), { class: 'num' }),
			td('State', d.state || '—'),
			td('Test', testBadge(d.test)),
			td('Return id', returnButton(d.device_return_id)),
			td('Attempt', d.attempt || '—', { class: 'num' }),
			td('Latency', ms(d.duration_ms), { class: 'num' }),
			td('Node', d.node || '—'),
			td('Delivery', detailButton(d.delivery_id)),
		]);
	}

	// detailButton opens a delivery's detail, where the gateway has them;
	// its text is the id's short form, as in the queue.
	function detailButton(id) {
		if (!id) return '—';
		if (!st.features.history) return h('span', { class: 'id', title: id, text: shortId(id) });
		return h('button', {
			type: 'button', class: 'link', text: shortId(id), title: id,
			'aria-label': 'Details of delivery ' + id,
			onclick: () => openDetail(id, true),
		});
	}

	function emptyRow(cols, text) {
		return h('tr', { class: 'empty' }, h('td', { colspan: cols, text }));
	}

	// shown: the row is in the table (test events may be hidden).
	const shown = (d) => !(st.hideTest && d.test);

	// renderDeliveries adds the new rows on top (keeping focus where it is),
	// or, with added null, redraws all; fresh lists rows to highlight. In a
	// time range, added rows are an older page: they go at the bottom.
	function renderDeliveries(added, fresh) {
		const tbody = $('deliveries').tBodies[0];
		st.rendered = true;
		const rows = st.rows.filter(shown);
		const range = ranged();
		if (added === null) {
			const freshSeqs = new Set((fresh || []).map((d) => d.seq));
			tbody.replaceChildren(...rows.map((d) => deliveryRow(d, freshSeqs.has(d.seq))));
		} else if (added.some(shown)) {
			const empty = tbody.querySelector('tr.empty');
			if (empty) empty.remove();
			const frag = document.createDocumentFragment();
			for (const d of added.filter(shown)) frag.append(deliveryRow(d, true));
			if (range) {
				tbody.append(frag);
			} else {
				tbody.prepend(frag);
				while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
			}
		}
		const hidden = st.rows.length - rows.length;
		if (rows.length === 0) {
			const filtered = st.filters.return_id || st.filters.state || st.filters.outcome;
			tbody.replaceChildren(emptyRow(10, hidden ? 'Only test events, hidden (untick Hide test events to see them).'
				: range ? 'No deliveries in this range' + (filtered ? ' match these filters.' : '.')
					: filtered ? 'No deliveries match these filters.' : 'No deliveries yet.'));
		}
		const newest = !range && st.rows.length >= MAX_ROWS ? ' newest' : '';
		const more = range && st.cursor ? ', older ones to load' : '';
		$('deliveries-count').textContent = !st.rows.length ? ''
			: hidden ? '(' + rows.length + ' shown, ' + hidden + ' test hidden' + (newest ? ', of the ' + MAX_ROWS + ' newest' : '') + more + ')'
				: '(' + rows.length + newest + more + ')';
		$('range-more').hidden = !(range && st.cursor);
	}

	// ---- a time range: older history, page by page --------------------------------

	// ranged: the table shows a time range (which the gateway can answer)
	// instead of the live deliveries.
	const ranged = () => !!(st.features.history && (st.range.since || st.range.until));

	// rangeQuery is the range and the filters, as the API takes them.
	const rangeQuery = () => compact(Object.assign({}, st.range, st.filters));

	// loadRange reads the range's first page, or with a cursor the next
	// (older) one, which goes below the rows already shown.
	async function loadRange(cursor) {
		const gen = st.gen;
		let r;
		try {
			r = await api('deliveries?' + query(Object.assign(rangeQuery(), { limit: PAGE, cursor })));
		} catch (e) {
			if (gen !== st.gen) return;
			if (!e.status) throw e; // no answer: the page says it is not updating
			sayAt('range-msg', 'Could not read this range: ' + e.message, true);
			if (!cursor) {
				st.rows = [];
				st.cursor = '';
				renderDeliveries(null);
			}
			return;
		}
		if (gen !== st.gen) return; // the range or the filters changed meanwhile
		const page = Array.isArray(r.body) ? r.body : [];
		st.cursor = r.res.headers.get('X-Reready-Next-Cursor') || '';
		sayAt('range-msg', '');
		if (cursor) {
			st.rows = st.rows.concat(page);
			renderDeliveries(page);
		} else {
			st.rows = page;
			renderDeliveries(null);
		}
	}

	async function loadOlder() {
		const btn = $('range-more');
		if (!st.cursor || btn.disabled) return;
		const focused = document.activeElement === btn;
		btn.disabled = true;
		try {
			await loadRange(st.cursor);
		} catch (e) {
			offline(e);
		} finally {
			btn.disabled = false;
			// Disabled, the button lost the focus: back on it, or on the
			// heading when the last page is in.
			if (focused) (btn.hidden ? $('deliveries-h') : btn).focus();
		}
	}

	// showRange says what the table holds: the live deliveries or a range.
	function showRange() {
		const range = ranged();
		$('range-note').hidden = !range;
		$('replay-range').hidden = !(range && st.features.replay);
		if (range) {
			$('range-what').textContent = 'from ' + (st.range.since || 'the oldest kept') + ' until ' + (st.range.until || 'now');
		} else {
			$('range-more').hidden = true;
			sayAt('range-msg', '');
		}
	}

	function resetRows() {
		st.gen++;
		st.rows = [];
		st.lastSeq = 0;
		st.rendered = false;
	}

	// ---- queue -----------------------------------------------------------------

	async function loadQueue() {
		const { body } = await api('queue');
		const items = Array.isArray(body) ? body : [];
		const key = JSON.stringify(items);
		if (key === st.queueKey) return;
		st.queueKey = key;
		const tbody = $('queue').tBodies[0];
		// Redraw, then put the focus back on the same button if it was on one.
		const f = document.activeElement;
		const focusKey = f && tbody.contains(f) ? f.dataset.key : '';
		tbody.replaceChildren(...items.map(queueRow));
		if (items.length === 0) tbody.append(emptyRow(11, 'The queue is empty.'));
		if (focusKey) {
			const again = Array.from(tbody.querySelectorAll('button')).find((b) => b.dataset.key === focusKey);
			(again || $('queue-h')).focus();
		}
		const pending = items.filter((i) => i.status === 'pending').length;
		$('queue-count').textContent = '(' + pending + ' pending, ' + (items.length - pending) + ' dead)';
	}

	// shortId is a delivery id's first 8 hex digits after its time
	// (1796354632-8f80b9fb... is 8f80b9fb), as the Delivery id column
	// begins with them.
	const shortId = (id) => {
		const m = /^[0-9]+-([0-9a-f]{8})/i.exec(String(id));
		return m ? m[1] : String(id);
	};

	// nextAttempt: a dead item waits for a hand; one held behind an earlier
	// delivery of its return (held_behind, absent from older gateways'
	// listings) goes after that one, whatever its next_attempt_at says.
	function nextAttempt(it) {
		if (it.status === 'dead') return 'none: retry by hand';
		if (it.held_behind) return ['held behind ', h('span', { class: 'id held', title: 'Delivery ' + it.held_behind, text: shortId(it.held_behind) })];
		return it.next_attempt_at ? timeEl(it.next_attempt_at) : '—';
	}

	// lastStatus: what the gateway answered for the last attempt; none
	// before the first (null, or 0 from older gateways).
	const lastStatus = (it) => (typeof it.last_status === 'number' && it.last_status > 0 ? String(it.last_status) : '—');

	function queueRow(it) {
		const rb = returnButton(it.device_return_id);
		if (rb instanceof Node) rb.dataset.key = 'return ' + it.id; // keeps the focus across redraws
		return h('tr', { data: rowData({ id: it.id, status: cls(it.status) }, it.test) }, [
			td('Received', timeEl(it.received_at)),
			td('Status', h('span', { class: 'badge s-' + cls(it.status), text: it.status })),
			td('Return id', rb),
			td('State', it.state || '—'),
			td('Test', testBadge(it.test)),
			td('Attempts', String(it.attempts), { class: 'num' }),
			td('Next attempt', nextAttempt(it)),
			td('Last status', lastStatus(it), { class: 'num' }),
			td('Last error', it.last_error || '—'),
			td('Delivery id', h('span', { class: 'id', text: it.id })),
			td('Actions', [
				h('button', {
					type: 'button', text: 'Retry', 'aria-label': 'Retry delivery ' + it.id, data: { key: 'retry ' + it.id },
					onclick: (ev) => retry(it, ev.currentTarget),
				}),
				' ',
				h('button', {
					type: 'button', class: 'danger', text: 'Drop…', 'aria-label': 'Drop delivery ' + it.id, data: { key: 'drop ' + it.id },
					onclick: (ev) => askDrop(it, ev.currentTarget),
				}),
			], { class: 'actions' }),
		]);
	}

	const say = (text, isError) => sayAt('action-msg', text, isError);

	// sayAt puts a message (as text) in one of the page's message lines.
	function sayAt(id, text, isError) {
		const m = $(id);
		m.textContent = text;
		m.classList.toggle('err', !!isError);
	}

	async function retry(it, btn) {
		btn.disabled = true;
		try {
			await api('queue/' + encodeURIComponent(it.id) + '/retry', { method: 'POST' });
			say('Retry asked for delivery ' + it.id + ': it is due now, after any earlier delivery of its return.');
		} catch (e) {
			say('Retry of delivery ' + it.id + ' failed: ' + e.message, true);
		} finally {
			btn.disabled = false;
			refreshSlow().catch(offline);
		}
	}

	function askDrop(it, btn) {
		st.drop = { item: it };
		st.dropFrom = btn.dataset.key;
		$('drop-what').textContent = it.id + ' (return ' + (it.device_return_id || '—') + ', state ' + (it.state || '—') + ', ' + it.status + ')';
		$('drop-dialog').showModal();
		$('drop-cancel').focus(); // the safe choice first
	}

	async function confirmDrop() {
		const d = st.drop;
		st.drop = null;
		$('drop-dialog').close();
		if (!d) return;
		try {
			await api('queue/' + encodeURIComponent(d.item.id), { method: 'DELETE' });
			say('Dropped delivery ' + d.item.id + '.');
		} catch (e) {
			say('Dropping delivery ' + d.item.id + ' failed: ' + e.message, true);
		}
		refreshSlow().catch(offline);
	}

	// ---- summary: counters and chart -----------------------------------------

	async function loadSummary() {
		const { body } = await api('summary');
		for (const k of ['verified', 'rejected', 'queued', 'dead']) $('c-' + k).textContent = String(body[k]);
		$('partial').hidden = !body.partial;
		renderChart(body.minutes || []);
	}

	function hhmm(iso) {
		return new Date(iso).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', hour12: false });
	}

	function niceMax(n) {
		for (const m of [1, 2, 5, 10, 20, 25, 50, 100]) if (n <= m) return m;
		const p = Math.pow(10, Math.floor(Math.log10(n)));
		for (const m of [1, 2, 5, 10]) if (n <= m * p) return m * p;
		return n;
	}

	// renderChart draws the stacked bars at the chart's width in pixels, so
	// its labels stay readable at any width.
	function renderChart(minutes) {
		st.minutes = minutes;
		const W = Math.max(280, Math.round($('chart').clientWidth || 960)), H = 170, L = 34, R = 6, T = 8, B = 22;
		const total = {};
		for (const o of CHART_ORDER) total[o] = 0;
		let busiest = null;
		const sums = minutes.map((m) => {
			let n = 0;
			for (const o of CHART_ORDER) {
				const c = (m.counts && m.counts[o]) || 0;
				total[o] += c;
				n += c;
			}
			if (n && (!busiest || n > busiest.n)) busiest = { n, start: m.start };
			return n;
		});
		const ymax = niceMax(Math.max(1, ...sums));
		const y = (v) => T + (H - T - B) * (1 - v / ymax);
		const bw = (W - L - R) / Math.max(1, minutes.length);
		const all = CHART_ORDER.reduce((a, o) => a + total[o], 0);
		const summary = all === 0 ? 'No deliveries in the last hour.'
			: all + ' in the last hour: ' + CHART_ORDER.filter((o) => total[o]).map((o) => total[o] + ' ' + chartLabel(o)).join(', ') +
				'. Busiest minute ' + hhmm(busiest.start) + ' with ' + busiest.n + '.';

		const svg = s('svg', { viewBox: '0 0 ' + W + ' ' + H, width: W, height: H, role: 'img', 'aria-labelledby': 'chart-t chart-d' }, [
			s('title', { id: 'chart-t', text: 'Deliveries per minute by outcome, last hour' }),
			s('desc', { id: 'chart-d', text: summary }),
		]);
		for (const v of [0, ymax / 2, ymax]) {
			svg.append(s('line', { class: 'axis', x1: L, x2: W - R, y1: y(v), y2: y(v) }));
			svg.append(s('text', { x: L - 4, y: y(v) + 3, 'text-anchor': 'end', text: String(v) }));
		}
		minutes.forEach((m, i) => {
			if (!sums[i]) return;
			const parts = CHART_ORDER.filter((o) => m.counts[o]).map((o) => m.counts[o] + ' ' + chartLabel(o));
			const g = s('g', { class: 'bar' }, s('title', { text: hhmm(m.start) + ': ' + parts.join(', ') }));
			let acc = 0;
			for (const o of CHART_ORDER) {
				const c = m.counts[o] || 0;
				if (!c) continue;
				g.append(s('rect', {
					class: 'o-' + cls(o), x: (L + i * bw + 0.5).toFixed(1), width: Math.max(1, bw - 1).toFixed(1),
					y: y(acc + c).toFixed(1), height: (y(acc) - y(acc + c)).toFixed(1),
				}));
				acc += c;
			}
			svg.append(g);
		});
		if (minutes.length) {
			const lbl = (i, anchor, text) => svg.append(s('text', { x: L + i * bw, y: H - 6, 'text-anchor': anchor, text }));
			lbl(0, 'start', hhmm(minutes[0].start));
			if (W >= 400) lbl(minutes.length / 2, 'middle', hhmm(minutes[Math.floor(minutes.length / 2)].start));
			lbl(minutes.length, 'end', 'now');
		}
		$('chart').replaceChildren(svg);
		$('legend').replaceChildren(...CHART_ORDER.map((o) => h('li', null, [
			h('span', { class: 'swatch o-' + cls(o), 'aria-hidden': 'true' }), chartLabel(o) + ' ' + total[o],
		])));
	}

	// ---- timeline of one return ----------------------------------------------

	// arrival: the entry is a state arriving verified (forwarded live, or
	// queued as it arrived), not a repeat or a redelivery attempt.
	const arrival = (e) => e.outcome === 'forwarded' || (e.outcome === 'queued' && (e.reason === 'upstream_failed' || e.reason === 'held'));

	function openTimeline(id, push) {
		st.timeline = id;
		writeURL(push);
		loadTimeline(true).catch(offline);
	}

	function closeTimeline() {
		st.timeline = '';
		writeURL(true);
		$('timeline').hidden = true;
		$('deliveries-h').focus();
	}

	async function loadTimeline(focus) {
		const id = st.timeline;
		if (!id) {
			$('timeline').hidden = true;
			return;
		}
		const { body } = await api('deliveries?' + query({ return_id: id, limit: TIMELINE_LIMIT }));
		if (st.timeline !== id) return;
		const entries = (Array.isArray(body) ? body : []).slice().reverse(); // oldest first
		const flags = new Map();
		const first = new Map(); // state -> its first arrival
		let maxRank = -1;
		for (const e of entries) {
			if (!arrival(e)) continue;
			const r = RANK.get(e.state);
			if (r === undefined) {
				flags.set(e.seq, 'undocumented state');
				continue;
			}
			if (r < maxRank) flags.set(e.seq, 'out of order');
			else if (first.has(e.state)) flags.set(e.seq, 'again');
			if (!first.has(e.state)) first.set(e.state, e);
			maxRank = Math.max(maxRank, r);
		}
		const path = [];
		let ended = false;
		for (const sd of STATES) {
			const e = first.get(sd.name);
			if (sd.rank === FINAL_RANK) {
				if (e) {
					ended = true;
					path.push(step(sd.name, e, flags));
				}
				continue;
			}
			if (e) path.push(step(sd.name, e, flags));
			else if (sd.rank < maxRank) path.push(h('li', { class: 'missing' }, [h('span', { class: 'st', text: sd.name }), h('span', { class: 'badge warn', text: 'not received' })]));
			else path.push(h('li', { class: 'later' }, [h('span', { class: 'st', text: sd.name }), 'not yet']));
		}
		if (!ended) path.push(h('li', { class: 'later' }, [h('span', { class: 'st', text: 'final state' }), 'not yet (failed, not_returned or complete)']));

		$('timeline-id').textContent = id;
		$('timeline-path').replaceChildren(...path);
		const tbody = $('timeline-table').tBodies[0];
		tbody.replaceChildren(...entries.map((e) => h('tr', { data: rowData({ seq: e.seq, outcome: cls(e.outcome) }, e.test) }, [
			td('Time', timeEl(e.time)),
			td('State', [e.state || '—', flags.has(e.seq) ? [' ', h('span', { class: 'badge warn', text: flags.get(e.seq) })] : null].flat()),
			td('Outcome', [badge(e.outcome), e.reason ? h('span', { class: 'reason', text: e.reason }) : null]),
			td('Sender got', e.status ? String(e.status) : '—', { class: 'num' }),
			td('App answered', e.upstream_status ? String(e.upstream_status) : '—', { class: 'num' }),
			td('Attempt', e.attempt || '—', { class: 'num' }),
			td('Latency', ms(e.duration_ms), { class: 'num' }),
			td('Delivery id', h('span', { class: 'id', text: e.delivery_id || '—' })),
		])));
		if (entries.length === 0) tbody.append(emptyRow(8, 'The journal holds nothing for this return.'));
		const sec = $('timeline');
		sec.hidden = false;
		if (focus) {
			sec.focus({ preventScroll: true });
			sec.scrollIntoView({ block: 'start' });
		}
	}

	function step(name, e, flags) {
		const bad = flags.get(e.seq) === 'out of order';
		return h('li', { class: bad ? 'bad' : 'seen' }, [
			h('span', { class: 'st', text: name }),
			'received ', timeEl(e.time),
			bad ? [' ', h('span', { class: 'badge warn', text: 'out of order' })] : null,
		].flat());
	}

	// ---- a delivery's detail -----------------------------------------------------

	function openDetail(id, push) {
		st.detail = id;
		writeURL(push);
		loadDetail(true).catch(offline);
	}

	function closeDetail() {
		st.detail = '';
		writeURL(true);
		$('detail').hidden = true;
		$('deliveries-h').focus();
	}

	async function loadDetail(focus) {
		const id = st.detail;
		const sec = $('detail');
		if (!id || !st.features.history) {
			sec.hidden = true;
			return;
		}
		$('detail-id').textContent = id;
		sayAt('detail-msg', '');
		let body = null;
		try {
			({ body } = await api('deliveries/' + encodeURIComponent(id)));
		} catch (e) {
			if (!e.status) throw e;
			if (st.detail !== id) return;
			showDetail(null);
			sayAt('detail-msg', 'No detail for this delivery: ' + e.message, true);
			return reveal(sec, focus);
		}
		if (st.detail !== id) return;
		showDetail(body && Array.isArray(body.entries) ? body : null);
		if (!body || !Array.isArray(body.entries)) sayAt('detail-msg', 'This gateway does not show a delivery\'s detail.', true);
		reveal(sec, focus);
	}

	function reveal(sec, focus) {
		sec.hidden = false;
		if (focus) {
			sec.focus({ preventScroll: true });
			sec.scrollIntoView({ block: 'start' });
		}
	}

	// showDetail fills the detail from the API's answer (null: nothing).
	function showDetail(d) {
		const entries = d ? d.entries : [];
		$('detail-where').replaceChildren(...(d && (d.host || d.uri) ? ['Received at ', h('code', { text: (d.host || '') + (d.uri || '') })] : []));
		$('detail-replay').hidden = !(d && st.features.replay);
		const tbody = $('detail-entries').tBodies[0];
		tbody.replaceChildren(...entries.map((e) => h('tr', { data: rowData({ seq: e.seq, outcome: cls(e.outcome) }, e.test) }, [
			td('Time', timeEl(e.time)),
			td('Outcome', [badge(e.outcome), e.reason ? h('span', { class: 'reason', text: e.reason }) : null]),
			td('Status', status(e), { class: 'num' }),
			td('State', e.state || '—'),
			td('Return id', e.device_return_id || '—'),
			td('Attempt', e.attempt || '—', { class: 'num' }),
			td('Latency', ms(e.duration_ms), { class: 'num' }),
			td('Node', e.node || '—'),
		])));
		if (entries.length === 0) tbody.append(emptyRow(8, 'No journal entries.'));

		const pre = $('detail-body');
		pre.textContent = '';
		pre.hidden = true;
		if (!d) {
			$('detail-body-note').textContent = '';
		} else if (typeof d.body !== 'string') {
			$('detail-body-note').textContent = 'Not kept: the history keeps bodies only when its bodies option is on.';
		} else {
			const b = bodyText(d.body);
			$('detail-body-note').textContent = b.note;
			pre.textContent = b.text;
			pre.hidden = false;
		}

		const hb = $('detail-headers').tBodies[0];
		const hs = d && d.headers && typeof d.headers === 'object' ? d.headers : null;
		$('detail-headers-note').textContent = !d ? '' : hs ? 'As received.' : 'Not kept: the history keeps headers with the bodies.';
		$('detail-headers').hidden = !hs;
		const rows = [];
		for (const name of Object.keys(hs || {}).sort()) {
			for (const v of [].concat(hs[name])) rows.push(h('tr', null, [td('Name', h('code', { text: name })), td('Value', String(v))]));
		}
		hb.replaceChildren(...rows);
	}

	// bodyText decodes a body (base64 of its exact bytes) for display: UTF-8
	// text, JSON indented.
	function bodyText(b64) {
		let bytes;
		try {
			bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
		} catch (e) {
			return { text: '', note: 'The body could not be decoded (not base64).' };
		}
		const size = bytes.length + (bytes.length === 1 ? ' byte' : ' bytes');
		let text;
		try {
			text = new TextDecoder('utf-8', { fatal: true }).decode(bytes);
		} catch (e) {
			return { text: new TextDecoder('utf-8').decode(bytes), note: size + ', not valid UTF-8 (shown with replacement characters).' };
		}
		const pretty = prettyJSON(text);
		return pretty === null ? { text, note: size + ', as received.' } : { text: pretty, note: size + ' of JSON, indented for reading.' };
	}

	// prettyJSON indents a JSON text by two spaces, or returns null if it is
	// not JSON. It only moves white space: strings, numbers and the order of
	// keys stay exactly as received (a parse and re-encode would round big
	// numbers and drop duplicate keys).
	function prettyJSON(text) {
		try {
			JSON.parse(text);
		} catch (e) {
			return null;
		}
		const ws = ' \t\n\r';
		let out = '';
		let depth = 0;
		const nl = () => '\n' + '  '.repeat(depth);
		for (let i = 0; i < text.length; i++) {
			const c = text[i];
			if (c === '"') {
				let j = i + 1;
				while (text[j] !== '"') j += text[j] === '\\' ? 2 : 1;
				out += text.slice(i, j + 1);
				i = j;
			} else if (ws.includes(c)) {
				continue;
			} else if (c === '{' || c === '[') {
				let j = i + 1;
				while (ws.includes(text[j])) j++;
				if (text[j] === (c === '{' ? '}' : ']')) {
					out += c + text[j];
					i = j;
				} else {
					depth++;
					out += c + nl();
				}
			} else if (c === '}' || c === ']') {
				depth--;
				out += nl() + c;
			} else if (c === ',') {
				out += ',' + nl();
			} else if (c === ':') {
				out += ': ';
			} else {
				out += c;
			}
		}
		return out;
	}

	// ---- confirmations -----------------------------------------------------------

	// askConfirm asks before a change: title and text, the confirming button's
	// label; run runs on confirming. The focus goes back to from.
	function askConfirm(title, text, ok, from, run) {
		st.confirm = run;
		st.confirmFrom = from;
		$('confirm-h').textContent = title;
		$('confirm-desc').textContent = text;
		$('confirm-ok').textContent = ok;
		$('confirm-dialog').showModal();
		$('confirm-cancel').focus(); // the safe choice first
	}

	function confirmed() {
		const run = st.confirm;
		st.confirm = null;
		$('confirm-dialog').close();
		backFromConfirm();
		if (run) run();
	}

	function backFromConfirm() {
		const from = st.confirmFrom;
		if (from && from.isConnected && !from.hidden) from.focus();
	}

	// ---- replay ------------------------------------------------------------------

	const deliveries = (n) => n + (n === 1 ? ' delivery' : ' deliveries');

	// askReplay asks the gateway how many deliveries body selects (a dry
	// run), and on confirming, replays them. what says which, msg is
	// the message line for the outcome.
	async function askReplay(body, what, btn, msg) {
		const focused = document.activeElement === btn;
		btn.disabled = true;
		let r;
		try {
			r = await postJSON('replay', Object.assign({}, body, { dry_run: true }));
		} catch (e) {
			sayAt(msg, 'Replay refused: ' + e.message, true);
			return;
		} finally {
			btn.disabled = false;
			if (focused) btn.focus(); // disabled, it lost the focus
		}
		const n = r.body && typeof r.body.count === 'number' ? r.body.count : 0;
		if (n === 0) {
			sayAt(msg, 'Nothing to replay: no kept delivery matches (' + what + ').');
			return;
		}
		askConfirm('Replay ' + deliveries(n) + '?',
			(n === 1 ? 'It is' : 'They are') + ' sent again to the app, in order per return, with X-ReReady-Replay: ' + what + '.',
			'Replay', btn, () => replay(body, msg));
	}

	async function replay(body, msg) {
		try {
			const { body: r } = await postJSON('replay', body);
			const n = r && typeof r.count === 'number' ? r.count : 0;
			sayAt(msg, 'Replay asked for ' + deliveries(n) + ': sent again to the app, in order per return.');
		} catch (e) {
			sayAt(msg, 'Replay refused: ' + e.message, true);
		}
		refreshSlow().catch(offline);
	}

	function replayOne() {
		const id = st.detail;
		askReplay({ ids: [id] }, 'delivery ' + id, $('detail-replay'), 'detail-msg');
	}

	function replayRange() {
		const q = rangeQuery();
		const filters = ['return_id', 'state', 'outcome'].filter((k) => q[k]).map((k) => k.replace('_', ' ') + ' ' + q[k]);
		askReplay(q, 'every kept delivery ' + $('range-what').textContent + (filters.length ? ', ' + filters.join(', ') : ''), $('replay-range'), 'range-msg');
	}

	// ---- pause -------------------------------------------------------------------

	async function loadPause() {
		let body;
		try {
			({ body } = await api('pause'));
		} catch (e) {
			// An older gateway (404) or one without a queue (409) cannot pause.
			if (e.status === 404 || e.status === 409) {
				st.features.pause = false;
				return;
			}
			throw e;
		}
		st.features.pause = !!(body && Array.isArray(body.paused));
		if (st.features.pause) renderPause(body.paused);
	}

	const pausedAll = (p) => !p.path || p.path === '*';

	function renderPause(paused) {
		st.paused = paused;
		const all = paused.find(pausedAll);
		$('pause').classList.toggle('paused', paused.length > 0);
		$('pause-state').replaceChildren(...(paused.length === 0 ? [h('li', { text: 'Delivery to the app is running.' })] : paused.map((p) => h('li', null, [
			pausedAll(p) ? 'Delivery paused' : ['Delivery to ', h('code', { text: p.path }), ' paused'],
			' since ', timeEl(p.since), ' by ', h('span', { class: 'by', text: p.by || 'unknown' }), '.',
			pausedAll(p) ? null : [' ', h('button', {
				type: 'button', text: 'Resume ' + p.path, 'aria-label': 'Resume delivery to ' + p.path,
				onclick: (ev) => setPause(false, p.path, ev.currentTarget),
			})],
		].flat()))));
		const btn = $('pause-toggle');
		btn.textContent = all ? 'Resume delivery' : 'Pause delivery…';
	}

	function togglePause() {
		const btn = $('pause-toggle');
		if ((st.paused || []).some(pausedAll)) return setPause(false, '', btn);
		askConfirm('Pause delivery to the app?',
			'Nothing is sent to the app until delivery is resumed; deliveries that arrive meanwhile wait in the queue.',
			'Pause delivery', btn, () => setPause(true, '', btn));
	}

	// setPause pauses or resumes delivery: every path, or one.
	async function setPause(pause, path, btn) {
		// A disabled button loses the focus: it comes back after.
		const focused = document.activeElement === btn;
		btn.disabled = true;
		try {
			const { body } = await postJSON(pause ? 'pause' : 'resume', path ? { path } : undefined);
			if (body && Array.isArray(body.paused)) renderPause(body.paused);
			sayAt('pause-msg', '');
		} catch (e) {
			sayAt('pause-msg', (pause ? 'Pausing' : 'Resuming') + ' failed: ' + e.message, true);
		} finally {
			btn.disabled = false;
			if (focused || document.activeElement === document.body) (btn.isConnected ? btn : $('pause-toggle')).focus();
		}
	}

	// ---- what the gateway answers ------------------------------------------------------

	// probe finds out what the gateway answers, for what is not known yet:
	// a time range (an invalid since is refused with 400; an older gateway
	// ignores it), replay (GET is no method of it, so anything but 404
	// means it is there) and pause. It returns whether anything changed.
	async function probe() {
		const f = st.features;
		const before = JSON.stringify(f);
		const known = (key, yes) => (e) => {
			if (e.status === 404 || e.status === 409) f[key] = false;
			else if (e.status) f[key] = yes(e.status);
		};
		await Promise.all([
			f.history === null && api('deliveries?' + query({ since: 'not-a-time', limit: 1 }))
				.then(() => { f.history = false; }, known('history', (s) => s === 400 ? true : null)),
			f.replay === null && api('replay')
				.then(() => { f.replay = true; }, known('replay', (s) => s === 401 || s >= 500 ? null : true)),
			f.pause === null && loadPause().catch(() => {}),
		]);
		return JSON.stringify(f) !== before;
	}

	// applyFeatures shows what the gateway answers and hides the rest.
	function applyFeatures() {
		const f = st.features;
		for (const e of document.querySelectorAll('.needs-history')) e.hidden = !f.history;
		$('pause').hidden = !f.pause;
		$('detail-replay').hidden = $('detail-replay').hidden || !f.replay;
		showRange();
	}

	// ---- the loop --------------------------------------------------------------

	function setLive(ok, err) {
		const live = $('live');
		if (ok) {
			$('updated').textContent = 'updated ' + new Date().toLocaleTimeString([], { hour12: false });
			if (st.online !== true) {
				live.textContent = 'Live';
				live.className = 'ok';
			}
		} else {
			const text = err && err.status === 401 ? 'Not updating: sign in again (reload the page).'
				: 'Not updating: ' + (err ? err.message : 'no answer') + '. Retrying…';
			if (live.textContent !== text) live.textContent = text;
			live.className = 'err';
		}
		st.online = ok;
	}

	const offline = (e) => setLive(false, e);

	async function refreshSlow() {
		if (Object.values(st.features).includes(null) && await probe()) {
			applyFeatures();
			if (st.features.history) {
				resetRows(); // the rows get their detail buttons, or the range is read
				if (st.detail) loadDetail(false).catch(offline);
			}
		}
		await Promise.all([loadQueue(), loadSummary(), st.features.pause && loadPause().then(applyFeatures)]);
		if (st.timeline) await loadTimeline(false);
	}

	async function tick() {
		if (st.busy) return;
		st.busy = true;
		clearTimeout(st.timer);
		try {
			let added = [];
			if (!ranged()) added = await pollDeliveries();
			else if (!st.rendered) await loadRange('');
			if (added.length > 0 || st.ticks % SLOW_EVERY === 0) await refreshSlow();
			st.ticks++;
			setLive(true);
		} catch (e) {
			setLive(false, e);
		} finally {
			st.busy = false;
			st.timer = setTimeout(tick, st.again ? 0 : document.hidden ? HIDDEN_POLL_MS : POLL_MS);
			st.again = false;
		}
	}

	function restart() {
		resetRows();
		showRange();
		st.ticks = 0;
		if (st.busy) {
			st.again = true;
			return;
		}
		tick();
	}

	// ---- wiring ----------------------------------------------------------------

	$('filters').addEventListener('submit', (ev) => {
		ev.preventDefault();
		st.filters = { return_id: $('f-return').value.trim(), state: $('f-state').value.trim(), outcome: $('f-outcome').value };
		st.range = { since: $('f-since').value.trim(), until: $('f-until').value.trim() };
		writeURL(true);
		restart();
	});
	$('f-clear').addEventListener('click', () => {
		$('f-return').value = '';
		$('f-state').value = '';
		$('f-outcome').value = '';
		$('f-since').value = '';
		$('f-until').value = '';
		$('f-hide-test').checked = false;
		st.hideTest = false;
		$('filters').requestSubmit();
	});
	// Hiding test events needs no request: the rows are on the page.
	$('f-hide-test').addEventListener('change', () => {
		st.hideTest = $('f-hide-test').checked;
		writeURL(false);
		renderDeliveries(null);
	});
	$('timeline-close').addEventListener('click', closeTimeline);
	$('timeline').addEventListener('keydown', (ev) => {
		if (ev.key === 'Escape') closeTimeline();
	});
	$('detail-close').addEventListener('click', closeDetail);
	$('detail').addEventListener('keydown', (ev) => {
		if (ev.key === 'Escape') closeDetail();
	});
	$('detail-replay').addEventListener('click', replayOne);
	$('range-more').addEventListener('click', loadOlder);
	$('replay-range').addEventListener('click', replayRange);
	$('pause-toggle').addEventListener('click', togglePause);
	$('confirm-ok').addEventListener('click', confirmed);
	$('confirm-cancel').addEventListener('click', () => $('confirm-dialog').close());
	$('confirm-dialog').addEventListener('close', () => {
		if ($('confirm-dialog').open) return;
		st.confirm = null;
		backFromConfirm();
	});
	$('drop-confirm').addEventListener('click', confirmDrop);
	$('drop-cancel').addEventListener('click', () => $('drop-dialog').close());
	// Closed by Drop it, Cancel or Escape: the focus goes back to the Drop
	// button (or the queue's heading if the row is gone). The close event
	// comes a moment later, so the dialog may have been opened again.
	$('drop-dialog').addEventListener('close', () => {
		if ($('drop-dialog').open) return;
		const from = Array.from($('queue').querySelectorAll('button')).find((b) => b.dataset.key === st.dropFrom);
		(from || $('queue-h')).focus();
	});
	window.addEventListener('popstate', () => {
		readURL();
		restart();
		loadTimeline(false).catch(offline);
		loadDetail(false).catch(offline);
	});
	let resizing = 0;
	window.addEventListener('resize', () => {
		clearTimeout(resizing);
		resizing = setTimeout(() => st.minutes && renderChart(st.minutes), 150);
	});
	document.addEventListener('visibilitychange', () => {
		if (!document.hidden) tick();
	});

	// First what the gateway answers, so a bookmarked range or detail opens
	// as such, then the live updates.
	readURL();
	probe().catch(() => {}).then(() => {
		applyFeatures();
		tick();
		if (st.timeline) loadTimeline(false).catch(offline);
		if (st.detail) loadDetail(false).catch(offline);
	});
})();
