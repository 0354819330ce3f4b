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

	function query(params) {
		const q = new URLSearchParams();
		for (const [k, v] of Object.entries(params)) if (v !== '' && v !== undefined && v !== null) q.set(k, String(v));
		return q.toString();
	}

	// ---- the URL holds the filters and the open timeline -----------------------

	function readURL() {
		const q = new URLSearchParams(location.search);
		st.filters = { return_id: q.get('return_id') || '', state: q.get('state') || '', outcome: q.get('outcome') || '' };
		st.timeline = q.get('timeline') || '';
		st.hideTest = q.get('hide_test') === '1';
		$('f-hide-test').checked = st.hideTest;
		$('f-return').value = st.filters.return_id;
		$('f-state').value = st.filters.state;
		$('f-outcome').value = st.filters.outcome;
	}

	function writeURL(push) {
		const q = query(Object.assign({}, st.filters, { hide_test: st.hideTest ? '1' : '', timeline: st.timeline }));
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
		]);
	}

	function emptyRow(cols, text) {
		return h('tr', { class: 'empty' }, h('td', { colspan: cols, text }));
	}

	// shown: the row is in the table (test events may be hidden).
	const shown = (d) => !(st.hideTest && d.test);

	// renderDeliveries adds the new rows on top (keeping focus where it is),
	// or, with added null, redraws all; fresh lists rows to highlight.
	function renderDeliveries(added, fresh) {
		const tbody = $('deliveries').tBodies[0];
		st.rendered = true;
		const rows = st.rows.filter(shown);
		if (added === null) {
			const freshSeqs = new Set((fresh || []).map((d) => d.seq));
			tbody.replaceChildren(...rows.map((d) => deliveryRow(d, freshSeqs.has(d.seq))));
		} else if (added.some(shown)) {
			const empty = tbody.querySelector('tr.empty');
			if (empty) empty.remove();
			const frag = document.createDocumentFragment();
			for (const d of added.filter(shown)) frag.append(deliveryRow(d, true));
			tbody.prepend(frag);
			while (tbody.rows.length > MAX_ROWS) tbody.lastElementChild.remove();
		}
		const hidden = st.rows.length - rows.length;
		if (rows.length === 0) {
			const filtered = st.filters.return_id || st.filters.state || st.filters.outcome;
			tbody.replaceChildren(emptyRow(8, hidden ? 'Only test events, hidden (untick Hide test events to see them).'
				: filtered ? 'No deliveries match these filters.' : 'No deliveries yet.'));
		}
		const newest = st.rows.length >= MAX_ROWS ? ' newest' : '';
		$('deliveries-count').textContent = !st.rows.length ? ''
			: hidden ? '(' + rows.length + ' shown, ' + hidden + ' test hidden' + (newest ? ', of the ' + MAX_ROWS + ' newest' : '') + ')'
				: '(' + rows.length + newest + ')';
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

	function say(text, isError) {
		const m = $('action-msg');
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
		await Promise.all([loadQueue(), loadSummary()]);
		if (st.timeline) await loadTimeline(false);
	}

	async function tick() {
		if (st.busy) return;
		st.busy = true;
		clearTimeout(st.timer);
		try {
			const added = await pollDeliveries();
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
		writeURL(true);
		restart();
	});
	$('f-clear').addEventListener('click', () => {
		$('f-return').value = '';
		$('f-state').value = '';
		$('f-outcome').value = '';
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
	});
	let resizing = 0;
	window.addEventListener('resize', () => {
		clearTimeout(resizing);
		resizing = setTimeout(() => st.minutes && renderChart(st.minutes), 150);
	});
	document.addEventListener('visibilitychange', () => {
		if (!document.hidden) tick();
	});

	readURL();
	tick();
	if (st.timeline) loadTimeline(false).catch(offline);
})();
