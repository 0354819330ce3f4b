package browser

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/chromedp/chromedp/kb"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The history views (issue 16): a time range paged with a cursor, a
// delivery's detail, replay and pause. The page is served through a proxy
// to a real gateway (its page, its live deliveries, queue and summary)
// that answers the new API calls itself, from fixed JSON, as their
// contracts say, and records what the page sent.

// call is an API request the stub answered.
type call struct {
	Method string
	Path   string
	Query  url.Values
	Body   string
	Site   string // Sec-Fetch-Site: same-origin for the page's own
}

// stub is the proxy. answer answers a request (true) or leaves it to the
// gateway (false); what it answers is recorded.
type stub struct {
	*httptest.Server
	mu    sync.Mutex
	calls []call
}

func startStub(t *testing.T, g *gateway, answer func(w http.ResponseWriter, r *http.Request, body []byte) bool) *stub {
	t.Helper()
	target, err := url.Parse(g.Base)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }}
	s := &stub{}
	s.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		r.Body = io.NopCloser(bytes.NewReader(body))
		if answer(w, r, body) {
			s.mu.Lock()
			s.calls = append(s.calls, call{r.Method, r.URL.Path, r.URL.Query(), string(body), r.Header.Get("Sec-Fetch-Site")})
			s.mu.Unlock()
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(s.Close)
	return s
}

// seen returns the recorded calls that match.
func (s *stub) seen(match func(call) bool) []call {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []call
	for _, c := range s.calls {
		if match(c) {
			out = append(out, c)
		}
	}
	return out
}

func reply(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	io.WriteString(w, body)
}

// isRange: a GET of deliveries with a range (the history's query).
func isRange(r *http.Request) bool {
	q := r.URL.Query()
	return r.URL.Path == "/ops/api/deliveries" && (q.Has("since") || q.Has("until") || q.Has("cursor"))
}

// badRange answers 400 for a since or until that is neither an RFC 3339
// time nor a duration, as the contract says (the page's probe sends one).
func badRange(w http.ResponseWriter, r *http.Request) bool {
	for _, k := range []string{"since", "until"} {
		v := r.URL.Query().Get(k)
		if v == "" {
			continue
		}
		if _, err := time.Parse(time.RFC3339, v); err == nil {
			continue
		}
		if d, err := time.ParseDuration(v); err == nil && d >= 0 {
			continue
		}
		b, _ := json.Marshal(map[string]string{"error": "invalid " + k + " " + strconv.Quote(v) + ": want an RFC 3339 time or a duration back from now"})
		reply(w, http.StatusBadRequest, string(b))
		return true
	}
	return false
}

// entry is a journal entry as the range and the detail list it.
func entry(seq int, t, id, outcome, rid, state, node string) string {
	e := map[string]any{"seq": seq, "time": t, "delivery_id": id, "outcome": outcome, "reason": "", "status": 200,
		"upstream_status": 200, "attempt": 1, "probe": false, "device_return_id": rid, "state": state, "test": false,
		"verified": "signature", "key": 0, "duration_ms": 3.2, "host": "hooks.example.com", "path": "/hook",
		"remote_addr": "203.0.113.9:4711", "node": node}
	if outcome == "queued" {
		e["status"], e["upstream_status"], e["reason"] = 202, 503, "upstream_failed"
	}
	b, _ := json.Marshal(e)
	return string(b)
}

const (
	d1 = "1796354632-8f80b9fb96c1fe571666e92770c07c78"
	d2 = "1796354633-0123456789abcdef0123456789abcdef"
	d3 = "1796354634-fedcba9876543210fedcba9876543210"
	d4 = "1796354635-00112233445566778899aabbccddeeff" // unknown
	// The cursor as a server may make it: characters a URL must escape.
	cursor2 = "eyJ0IjoxNzk2MzU0NjMyfQ+/=="
)

// historyStub answers the range (two pages), the details of d1 to d3,
// GET api/replay with 405 (the route is there, for POST) and GET
// api/pause with 404, unless more answers first.
func historyStub(t *testing.T, g *gateway, more func(w http.ResponseWriter, r *http.Request, body []byte) bool) *stub {
	page1 := "[" + entry(12, "2026-12-04T03:00:12Z", d1, "forwarded", "r-new-1", "complete", "gw-a") + "," +
		entry(11, "2026-12-04T03:00:11Z", d2, "queued", "r-new-2", "pending_return_shipment", "gw-a") + "]"
	page2 := "[" + entry(7, "2026-12-04T02:10:07Z", d3, "forwarded", "r-old-1", "failed", "gw-b") + "]"
	return startStub(t, g, func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if more != nil && more(w, r, body) {
			return true
		}
		switch {
		case isRange(r):
			if badRange(w, r) {
				return true
			}
			switch r.URL.Query().Get("cursor") {
			case "":
				w.Header().Set("X-Reready-Next-Cursor", cursor2)
				reply(w, http.StatusOK, page1)
			case cursor2:
				reply(w, http.StatusOK, page2)
			default:
				reply(w, http.StatusBadRequest, `{"error": "invalid cursor"}`)
			}
		case r.URL.Path == "/ops/api/deliveries/"+d1:
			reply(w, http.StatusOK, detail1)
		case r.URL.Path == "/ops/api/deliveries/"+d2:
			reply(w, http.StatusOK, detail2)
		case r.URL.Path == "/ops/api/deliveries/"+d3:
			reply(w, http.StatusOK, `{"delivery_id": "`+d3+`", "entries": [`+entry(7, "2026-12-04T02:10:07Z", d3, "forwarded", "r-old-1", "failed", "gw-b")+`], "host": "hooks.example.com", "uri": "/hook"}`)
		case strings.HasPrefix(r.URL.Path, "/ops/api/deliveries/"):
			reply(w, http.StatusNotFound, `{"error": "no delivery \"`+strings.TrimPrefix(r.URL.Path, "/ops/api/deliveries/")+`\" in the journal or the history"}`)
		case r.URL.Path == "/ops/api/replay" && r.Method == http.MethodGet:
			w.Header().Set("Allow", "POST")
			reply(w, http.StatusMethodNotAllowed, `{"error": "method not allowed; want POST"}`)
		case r.URL.Path == "/ops/api/pause" || r.URL.Path == "/ops/api/resume":
			reply(w, http.StatusNotFound, `{"error": "not found"}`)
		default:
			return false
		}
		return true
	})
}

// body1 is d1's body: JSON with markup in a string, a number no float
// holds, key order that is not sorted and empty containers.
const body1 = `{"device_return_id":"r-new-1","state":"complete","test":false,"n":12345678901234567890,` +
	`"note":"<script>window.__xss=1</script><img src=x onerror=\"window.__xss=2\">","nested":{"b":[1,2,{}],"a":[]}}`

// body2 is d2's: not JSON, markup as text, on two lines.
const body2 = "<script>window.__xss=4</script> not JSON\n<img src=x onerror=\"window.__xss=5\">"

var (
	detail1 = `{"delivery_id": "` + d1 + `", "entries": [` +
		entry(3, "2026-12-04T03:00:10Z", d1, "queued", "r-new-1", "complete", "gw-a") + "," +
		entry(12, "2026-12-04T03:00:12Z", d1, "forwarded", "r-new-1", "complete", "gw-b") + `],
		"body": "` + base64.StdEncoding.EncodeToString([]byte(body1)) + `",
		"headers": {"X-Reready-State": "complete", "Content-Type": "application/json", "X-Evil": "<img src=x onerror=\"window.__xss=3\">"},
		"host": "hooks.example.com", "uri": "/hook?x=<b>"}`
	detail2 = `{"delivery_id": "` + d2 + `", "entries": [` + entry(11, "2026-12-04T03:00:11Z", d2, "queued", "r-new-2", "pending_return_shipment", "gw-a") + `],
		"body": "` + base64.StdEncoding.EncodeToString([]byte(body2)) + `", "host": "hooks.example.com", "uri": "/hook"}`
)

func rangeCalls(s *stub) []call {
	return s.seen(func(c call) bool { return c.Path == "/ops/api/deliveries" && c.Query.Get("since") != "not-a-time" })
}

// A range typed in the filters (with the keyboard) shows the history's
// first page instead of the live deliveries, Older deliveries asks for the
// next page with the cursor, the range lives in the URL, a bad since is
// the server's error as text, and Clear goes back to live.
func TestPageHistoryRange(t *testing.T) {
	const secret = "ssk_browser_range_3c2b1a09"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	live := harness.Event{ID: harness.UUID(), State: "complete"}
	if status, _ := g.send(t, harness.Python, secret, live); status != http.StatusOK {
		t.Fatalf("live event: status %d", status)
	}
	s := historyStub(t, g, nil)
	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, s.URL+"/ops/")
	waitJS(t, ctx, "the live row", rowWhere("#deliveries", map[string]string{"Return id": live.ID, "outcome": "forwarded"}))
	waitJS(t, ctx, "the range fields", `!document.getElementById('f-since').closest('label').hidden && !document.getElementById('f-until').closest('label').hidden`)

	do(t, ctx, chromedp.Focus(chromedp.ID("f-since")), chromedp.SendKeys(chromedp.ID("f-since"), "2h"+kb.Enter))
	page1 := `(() => { const r = ` + rowsJS + `('#deliveries'); return r.length === 2 && r[0]['Return id'] === 'r-new-1' && r[1]['Return id'] === 'r-new-2' &&
		r.every((x) => x.Node === 'gw-a') && r[0].Delivery === '8f80b9fb'; })()`
	waitJS(t, ctx, "the range's first page", page1+` && location.search === '?since=2h' && !document.getElementById('range-note').hidden &&
		document.getElementById('range-what').textContent === 'from 2h until now' && !document.getElementById('range-more').hidden`)
	first := rangeCalls(s)
	if len(first) != 1 || first[0].Query.Get("since") != "2h" || first[0].Query.Has("cursor") || first[0].Query.Has("after") || first[0].Query.Get("limit") == "" {
		t.Fatalf("the first range request: %+v; want one with since=2h and a limit, no cursor, no after", first)
	}

	// No live poll while the range shows (the page polls every second).
	const livePolls = `performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/deliveries?') && !e.name.includes('since=')).length`
	var before, after int
	evalJS(t, ctx, livePolls, &before)
	time.Sleep(2500 * time.Millisecond)
	evalJS(t, ctx, livePolls, &after)
	if after != before {
		t.Errorf("%d live polls while the range showed", after-before)
	}

	// Older deliveries, with the keyboard: the next page below, with the cursor.
	evalJS(t, ctx, `document.getElementById('range-more').focus(); true`, nil)
	do(t, ctx, chromedp.KeyEvent(kb.Enter))
	waitJS(t, ctx, "the older page below the first", `(() => { const r = `+rowsJS+`('#deliveries'); return r.length === 3 && r[2]['Return id'] === 'r-old-1' && r[2].Node === 'gw-b'; })()
		&& document.getElementById('range-more').hidden && document.getElementById('deliveries-count').textContent === '(3)' &&
		document.activeElement.id === 'deliveries-h'`)
	calls := rangeCalls(s)
	if len(calls) != 2 || calls[1].Query.Get("cursor") != cursor2 || calls[1].Query.Get("since") != "2h" {
		t.Fatalf("range requests %+v; want a second one with cursor %q and since=2h", calls, cursor2)
	}

	// Bookmarked: a reload shows the range again.
	reload(t, ctx)
	waitJS(t, ctx, "the range after a reload", page1+` && document.getElementById('f-since').value === '2h'`)

	// A since the server refuses: its error, as text.
	do(t, ctx, chromedp.SetValue(chromedp.ID("f-since"), "yesterday<b>"), chromedp.Click(chromedp.CSS(`#filters button[type=submit]`)))
	waitJS(t, ctx, "the server's error", `document.getElementById('range-msg').textContent === 'Could not read this range: invalid since "yesterday\u003cb\u003e": want an RFC 3339 time or a duration back from now' &&
		document.getElementById('range-msg').classList.contains('err') && document.querySelector('#deliveries tbody tr.empty') !== null && !document.querySelector('#range-msg b')`)

	// Clear: live again, the range gone from the URL.
	do(t, ctx, chromedp.Click(chromedp.ID("f-clear")))
	waitJS(t, ctx, "live again", rowWhere("#deliveries", map[string]string{"Return id": live.ID})+` && location.search === '' &&
		document.getElementById('range-note').hidden && document.getElementById('range-msg').textContent === ''`)

	noViolations(t, ctx)
}

// A delivery's detail: its entries, the body (JSON indented exactly as
// json.Indent does, so big numbers and key order are kept) and the
// headers, all as text; opened from the range with the keyboard, in the
// URL, closed with Escape; a body that is not JSON as it is, a delivery
// without a body says so, an unknown one shows the server's error; at a
// phone's width nothing scrolls sideways.
func TestPageDeliveryDetail(t *testing.T) {
	const secret = "ssk_browser_detail_7d6c5b4a"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	s := historyStub(t, g, nil)
	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, s.URL+"/ops/?since=1h")

	btn := `Array.from(document.querySelectorAll('#deliveries button.link')).find((b) => b.getAttribute('aria-label') === 'Details of delivery ` + d1 + `')`
	waitJS(t, ctx, "d1's detail button", btn+` !== undefined`)
	evalJS(t, ctx, btn+`.focus(); true`, nil)
	do(t, ctx, chromedp.KeyEvent(kb.Enter))

	var pretty bytes.Buffer
	if err := json.Indent(&pretty, []byte(body1), "", "  "); err != nil {
		t.Fatal(err)
	}
	shown := `(() => { const r = ` + rowsJS + `('#detail-entries');
		return !document.getElementById('detail').hidden && document.getElementById('detail-id').textContent === ` + jsString(d1) + ` &&
			r.length === 2 && r[0].Outcome === 'queuedupstream_failed' && r[0].Node === 'gw-a' && r[1].Outcome === 'forwarded' && r[1].Node === 'gw-b' &&
			document.getElementById('detail-body').textContent === ` + jsString(pretty.String()) + ` &&
			document.getElementById('detail-body-note').textContent === '` + strconv.Itoa(len(body1)) + ` bytes of JSON, indented for reading.' &&
			document.getElementById('detail-where').textContent === 'Received at hooks.example.com/hook?x=<b>' &&
			(` + rowsJS + `('#detail-headers')).map((h) => h.Name + ': ' + h.Value).join('|') ===
				'Content-Type: application/json|X-Evil: <img src=x onerror="window.__xss=3">|X-Reready-State: complete'; })()`
	waitJS(t, ctx, "d1's detail", shown)
	var state struct {
		Search, Focus string
		Made          int
		XSS           any
	}
	check := func(what string) {
		t.Helper()
		evalJS(t, ctx, `({Search: location.search, Focus: document.activeElement.id,
			Made: document.querySelectorAll('main script, main img, main b, [onerror]').length,
			XSS: window.__xss === undefined ? null : window.__xss})`, &state)
		if state.Made != 0 || state.XSS != nil {
			t.Errorf("%s: %d elements made from the markup, window.__xss = %v", what, state.Made, state.XSS)
		}
	}
	check("d1")
	if state.Search != "?since=1h&delivery="+d1 || state.Focus != "detail" {
		t.Errorf("URL query %q, focus on #%s; want ?since=1h&delivery=%s and the detail", state.Search, state.Focus, d1)
	}

	// Bookmarked: a reload opens it again.
	reload(t, ctx)
	waitJS(t, ctx, "d1's detail after a reload", shown)

	// Escape closes it; the focus goes to the deliveries.
	evalJS(t, ctx, `document.getElementById('detail-close').focus(); true`, nil)
	do(t, ctx, chromedp.KeyEvent(kb.Escape))
	waitJS(t, ctx, "the detail closed", `document.getElementById('detail').hidden && location.search === '?since=1h' && document.activeElement.id === 'deliveries-h'`)

	// A body that is not JSON, as it is; no headers kept.
	open(t, ctx, s.URL+"/ops/?delivery="+d2)
	waitJS(t, ctx, "d2's body as text", `!document.getElementById('detail').hidden && document.getElementById('detail-body').textContent === `+jsString(body2)+` &&
		document.getElementById('detail-body-note').textContent === '`+strconv.Itoa(len(body2))+` bytes, as received.' &&
		document.getElementById('detail-headers').hidden && document.getElementById('detail-headers-note').textContent.startsWith('Not kept')`)
	check("d2")

	// No body kept at all.
	open(t, ctx, s.URL+"/ops/?delivery="+d3)
	waitJS(t, ctx, "d3 without a body", `!document.getElementById('detail').hidden && document.getElementById('detail-body').hidden &&
		document.getElementById('detail-body-note').textContent.startsWith('Not kept') && `+rowWhere("#detail-entries", map[string]string{"Return id": "r-old-1", "Node": "gw-b"}))

	// Unknown: the server's 404, as text.
	open(t, ctx, s.URL+"/ops/?delivery="+d4)
	waitJS(t, ctx, "the unknown delivery's error", `document.getElementById('detail-msg').textContent === 'No detail for this delivery: no delivery "`+d4+`" in the journal or the history' &&
		document.querySelector('#detail-entries tbody tr.empty') !== null`)

	// At a phone's width, the detail fits.
	do(t, ctx, chromedp.EmulateViewport(390, 844, chromedp.EmulateMobile))
	open(t, ctx, s.URL+"/ops/?delivery="+d1)
	waitJS(t, ctx, "d1's detail at a phone's width", shown)
	var layout struct{ ScrollWidth, InnerWidth int }
	evalJS(t, ctx, `({ScrollWidth: document.documentElement.scrollWidth, InnerWidth: window.innerWidth})`, &layout)
	if layout.InnerWidth > 420 || layout.ScrollWidth > layout.InnerWidth {
		t.Errorf("the page is %d px wide in a %d px viewport", layout.ScrollWidth, layout.InnerWidth)
	}
	check("d1 at a phone's width")
	noViolations(t, ctx)
}

// replayStub answers POST api/replay: {"count", "ids"} for ids or a
// range, or 409 while refuse is set.
func replayStub(t *testing.T, g *gateway, refuse *bool, mu *sync.Mutex) *stub {
	return historyStub(t, g, func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		if r.URL.Path != "/ops/api/replay" || r.Method != http.MethodPost {
			return false
		}
		mu.Lock()
		no := *refuse
		mu.Unlock()
		if no {
			reply(w, http.StatusConflict, `{"error": "history bodies is off: nothing to replay <without> them"}`)
			return true
		}
		var req struct {
			IDs []string `json:"ids"`
		}
		json.Unmarshal(body, &req)
		ids := req.IDs
		if ids == nil {
			ids = []string{d3, d2, d1}
		}
		b, _ := json.Marshal(map[string]any{"count": len(ids), "ids": ids})
		reply(w, http.StatusOK, string(b))
		return true
	})
}

// Replay of one delivery and of a range: the dry run's count in a
// confirmation, the real request only on confirming (Escape sends
// nothing), the right JSON, same-origin; a 409 is shown as the server
// wrote it.
func TestPageReplay(t *testing.T) {
	const secret = "ssk_browser_replay_5e4d3c2b"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	var mu sync.Mutex
	refuse := false
	s := replayStub(t, g, &refuse, &mu)
	ctx := newBrowser(t, 1280, 1000)
	replays := func() []map[string]any {
		var out []map[string]any
		for _, c := range s.seen(func(c call) bool { return c.Path == "/ops/api/replay" && c.Method == http.MethodPost }) {
			if c.Site != "same-origin" {
				t.Errorf("a replay request with Sec-Fetch-Site %q", c.Site)
			}
			var m map[string]any
			if err := json.Unmarshal([]byte(c.Body), &m); err != nil {
				t.Errorf("replay body %q: %v", c.Body, err)
			}
			out = append(out, m)
		}
		return out
	}
	want := func(what string, bodies ...map[string]any) {
		t.Helper()
		if got := replays(); !reflect.DeepEqual(got, bodies) {
			t.Fatalf("%s: replay requests %v, want %v", what, got, bodies)
		}
	}
	dialog := func(title string) string {
		return `document.getElementById('confirm-dialog').open && document.getElementById('confirm-h').textContent === ` + jsString(title) + ` &&
			document.getElementById('confirm-desc').textContent.includes('sent again to the app, in order per return, with X-ReReady-Replay') &&
			document.activeElement === document.getElementById('confirm-cancel')`
	}

	// One delivery, from its detail.
	open(t, ctx, s.URL+"/ops/?delivery="+d1)
	waitJS(t, ctx, "the detail's Replay button", `!document.getElementById('detail').hidden && !document.getElementById('detail-replay').hidden`)
	one := map[string]any{"ids": []any{d1}}
	oneDry := map[string]any{"ids": []any{d1}, "dry_run": true}
	click(t, ctx, `document.getElementById('detail-replay')`)
	waitJS(t, ctx, "the confirmation of one", dialog("Replay 1 delivery?")+` && document.getElementById('confirm-desc').textContent.includes(`+jsString(d1)+`)`)
	want("asked", oneDry)
	do(t, ctx, chromedp.KeyEvent(kb.Escape))
	waitJS(t, ctx, "the dialog closed, the focus back", `!document.getElementById('confirm-dialog').open && document.activeElement.id === 'detail-replay'`)
	time.Sleep(300 * time.Millisecond)
	want("cancelled", oneDry)
	click(t, ctx, `document.getElementById('detail-replay')`)
	waitJS(t, ctx, "the confirmation again", dialog("Replay 1 delivery?"))
	click(t, ctx, `document.getElementById('confirm-ok')`)
	waitJS(t, ctx, "the replay's result", `document.getElementById('detail-msg').textContent === 'Replay asked for 1 delivery: sent again to the app, in order per return.'`)
	want("confirmed", oneDry, oneDry, one)

	// A range, with filters.
	open(t, ctx, s.URL+"/ops/?return_id=r-new-1&outcome=forwarded&since=2h&until=2026-12-04T03:30:00Z")
	waitJS(t, ctx, "Replay these", `!document.getElementById('replay-range').hidden && `+rowWhere("#deliveries", map[string]string{"Return id": "r-new-1"}))
	rng := map[string]any{"since": "2h", "until": "2026-12-04T03:30:00Z", "return_id": "r-new-1", "outcome": "forwarded"}
	rngDry := map[string]any{"since": "2h", "until": "2026-12-04T03:30:00Z", "return_id": "r-new-1", "outcome": "forwarded", "dry_run": true}
	click(t, ctx, `document.getElementById('replay-range')`)
	waitJS(t, ctx, "the confirmation of the range", dialog("Replay 3 deliveries?")+` && document.getElementById('confirm-desc').textContent.includes('from 2h until 2026-12-04T03:30:00Z')`)
	want("range asked", oneDry, oneDry, one, rngDry)
	click(t, ctx, `document.getElementById('confirm-ok')`)
	waitJS(t, ctx, "the range replay's result", `document.getElementById('range-msg').textContent === 'Replay asked for 3 deliveries: sent again to the app, in order per return.'`)
	want("range confirmed", oneDry, oneDry, one, rngDry, rng)

	// Bodies not kept: the 409's error as the server wrote it, no dialog.
	mu.Lock()
	refuse = true
	mu.Unlock()
	click(t, ctx, `document.getElementById('replay-range')`)
	waitJS(t, ctx, "the 409's error", `document.getElementById('range-msg').textContent === 'Replay refused: history bodies is off: nothing to replay <without> them' &&
		document.getElementById('range-msg').classList.contains('err') && !document.getElementById('confirm-dialog').open && !document.querySelector('#range-msg without')`)
	want("refused", oneDry, oneDry, one, rngDry, rng, rngDry)
	noViolations(t, ctx)
}

// pauseEntry is one paused path as GET api/pause lists it.
type pauseEntry struct {
	Path  string `json:"path"`
	Since string `json:"since"`
	By    string `json:"by"`
}

// Pause asks first and then shows who paused and since when (after a
// reload too, and a pause another operator made of one path); Resume
// clears it; a 409 is shown.
func TestPagePause(t *testing.T) {
	const secret = "ssk_browser_pause_1f2e3d4c"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	var mu sync.Mutex
	paused := []pauseEntry{}
	refuse := false
	since := time.Now().UTC().Truncate(time.Second).Format(time.RFC3339)
	s := startStub(t, g, func(w http.ResponseWriter, r *http.Request, body []byte) bool {
		mu.Lock()
		defer mu.Unlock()
		switch {
		case r.URL.Path == "/ops/api/pause" && r.Method == http.MethodGet:
		case (r.URL.Path == "/ops/api/pause" || r.URL.Path == "/ops/api/resume") && r.Method == http.MethodPost:
			if refuse {
				reply(w, http.StatusConflict, `{"error": "the queue is off: nothing to pause"}`)
				return true
			}
			var req struct{ Path string }
			if len(body) > 0 {
				json.Unmarshal(body, &req)
			}
			if req.Path == "" {
				req.Path = "*"
			}
			var kept []pauseEntry
			for _, p := range paused {
				if p.Path != req.Path {
					kept = append(kept, p)
				}
			}
			paused = append([]pauseEntry{}, kept...)
			if strings.HasSuffix(r.URL.Path, "/pause") {
				paused = append(paused, pauseEntry{req.Path, since, r.RemoteAddr})
			}
		case isRange(r), r.URL.Path == "/ops/api/replay":
			reply(w, http.StatusNotFound, `{"error": "not found"}`)
			return true
		default:
			return false
		}
		b, _ := json.Marshal(map[string]any{"paused": paused})
		reply(w, http.StatusOK, string(b))
		return true
	})
	ctx := newBrowser(t, 1280, 1000)
	posts := func() []call {
		return s.seen(func(c call) bool { return c.Method == http.MethodPost })
	}
	open(t, ctx, s.URL+"/ops/")
	running := `!document.getElementById('pause').hidden && document.getElementById('pause-state').textContent === 'Delivery to the app is running.' &&
		document.getElementById('pause-toggle').textContent === 'Pause delivery…' && !document.getElementById('pause').classList.contains('paused')`
	waitJS(t, ctx, "delivery running", running)

	// Pause asks first; Escape keeps it running.
	click(t, ctx, `document.getElementById('pause-toggle')`)
	waitJS(t, ctx, "the confirmation", `document.getElementById('confirm-dialog').open && document.getElementById('confirm-h').textContent === 'Pause delivery to the app?'`)
	do(t, ctx, chromedp.KeyEvent(kb.Escape))
	waitJS(t, ctx, "the dialog closed", `!document.getElementById('confirm-dialog').open && document.activeElement.id === 'pause-toggle'`)
	if p := posts(); len(p) != 0 {
		t.Fatalf("requests after cancelling: %+v", p)
	}
	click(t, ctx, `document.getElementById('pause-toggle')`)
	waitJS(t, ctx, "the confirmation again", `document.getElementById('confirm-dialog').open`)
	click(t, ctx, `document.getElementById('confirm-ok')`)
	var by string
	pausedJS := func() string {
		return `document.getElementById('pause').classList.contains('paused') && document.getElementById('pause-toggle').textContent === 'Resume delivery' &&
			/^Delivery paused since .+ by ` + strings.ReplaceAll(by, ".", `\.`) + `\.$/.test(document.getElementById('pause-state').textContent) &&
			document.querySelector('#pause-state time').getAttribute('datetime') === ` + jsString(since)
	}
	waitJS(t, ctx, "the pause's request", `document.getElementById('pause-toggle').textContent === 'Resume delivery'`)
	p := posts()
	if len(p) != 1 || p[0].Path != "/ops/api/pause" || p[0].Body != "" || p[0].Site != "same-origin" {
		t.Fatalf("requests after confirming: %+v; want one POST api/pause without a body, same-origin", p)
	}
	mu.Lock()
	by = paused[0].By
	mu.Unlock()
	waitJS(t, ctx, "paused, by whom and since when", pausedJS())

	// A reload shows it from GET api/pause.
	reload(t, ctx)
	waitJS(t, ctx, "paused after a reload", pausedJS())

	// Another operator pauses one path: shown within a slow refresh, with
	// its own Resume.
	mu.Lock()
	paused = append(paused, pauseEntry{"/webhooks/x", since, "192.0.2.7:5151"})
	mu.Unlock()
	waitJS(t, ctx, "the path's pause", `document.getElementById('pause-state').textContent.includes('Delivery to /webhooks/x paused since ') &&
		document.getElementById('pause-state').textContent.includes(' by 192.0.2.7:5151.')`)
	click(t, ctx, `Array.from(document.querySelectorAll('#pause-state button')).find((b) => b.textContent === 'Resume /webhooks/x')`)
	waitJS(t, ctx, "the path resumed", `!document.getElementById('pause-state').textContent.includes('/webhooks/x') && `+pausedJS())
	if p := posts(); len(p) != 2 || p[1].Path != "/ops/api/resume" || p[1].Body != `{"path":"/webhooks/x"}` {
		t.Fatalf("requests: %+v; want a POST api/resume of /webhooks/x", p)
	}

	// Resume clears it, without asking.
	click(t, ctx, `document.getElementById('pause-toggle')`)
	waitJS(t, ctx, "running again", running+` && document.activeElement.id === 'pause-toggle'`)
	if p := posts(); len(p) != 3 || p[2].Path != "/ops/api/resume" || p[2].Body != "" {
		t.Fatalf("requests: %+v; want a POST api/resume without a body", p)
	}

	// The queue off: the 409's error.
	mu.Lock()
	refuse = true
	mu.Unlock()
	click(t, ctx, `document.getElementById('pause-toggle')`)
	waitJS(t, ctx, "the confirmation", `document.getElementById('confirm-dialog').open`)
	click(t, ctx, `document.getElementById('confirm-ok')`)
	waitJS(t, ctx, "the 409's error", `document.getElementById('pause-msg').textContent === 'Pausing failed: the queue is off: nothing to pause' && `+running)
	noViolations(t, ctx)
}

// A gateway without the history, replay and pause (404, or a range it
// ignores, as before issue 16): the page loads, updates live and shows
// none of them, even opened from a bookmark of a range and a detail.
func TestPageOlderGateway(t *testing.T) {
	const secret = "ssk_browser_older_9a8b7c6d"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	for _, tc := range []struct {
		name   string
		ranges string // "404", or "ignored": answered as without a range
	}{{"endpoints 404", "404"}, {"range ignored", "ignored"}} {
		t.Run(tc.name, func(t *testing.T) {
			s := startStub(t, g, func(w http.ResponseWriter, r *http.Request, _ []byte) bool {
				switch {
				case isRange(r) && tc.ranges == "ignored":
					q := r.URL.Query()
					q.Del("since")
					q.Del("until")
					q.Del("cursor")
					r.URL.RawQuery = q.Encode()
					return false
				case isRange(r), strings.HasPrefix(r.URL.Path, "/ops/api/deliveries/"),
					r.URL.Path == "/ops/api/pause", r.URL.Path == "/ops/api/resume", r.URL.Path == "/ops/api/replay":
					reply(w, http.StatusNotFound, `{"error": "not found: want /deliveries, /summary, /queue, /queue/<id>/retry or /queue/<id>"}`)
					return true
				}
				return false
			})
			ev := harness.Event{ID: harness.UUID(), State: "complete"}
			if status, _ := g.send(t, harness.Ruby, secret, ev); status != http.StatusOK {
				t.Fatalf("event: status %d", status)
			}
			ctx := newBrowser(t, 1280, 1000)
			open(t, ctx, s.URL+"/ops/?since=2h&delivery="+d1)
			waitJS(t, ctx, "the live row, its delivery id as text", `(`+rowsJS+`('#deliveries')).some((r) => r['Return id'] === `+jsString(ev.ID)+` && r.outcome === 'forwarded' && /^[0-9a-f]{8}$/.test(r.Delivery))`)
			var hidden struct {
				Pause, Since, Note, Detail, Help bool
				Buttons                          int
			}
			time.Sleep(500 * time.Millisecond)
			evalJS(t, ctx, `({Pause: document.getElementById('pause').hidden, Since: document.getElementById('f-since').offsetParent === null,
				Note: document.getElementById('range-note').hidden, Detail: document.getElementById('detail').hidden,
				Help: document.getElementById('range-help').hidden,
				Buttons: document.querySelectorAll('#deliveries button[aria-label^="Details"], #detail-replay:not([hidden]), #replay-range:not([hidden])').length})`, &hidden)
			if !hidden.Pause || !hidden.Since || !hidden.Note || !hidden.Detail || !hidden.Help || hidden.Buttons != 0 {
				t.Errorf("shown on an older gateway: %+v (true is hidden)", hidden)
			}
			noViolations(t, ctx)
		})
	}
}
