package rereadyverify

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
)

func newTestUI(t *testing.T) *UI {
	t.Helper()
	u := new(UI)
	if err := u.Provision(caddy.Context{}); err != nil {
		t.Fatal(err)
	}
	return u
}

// serveUI runs one request through the handler and returns the recorder
// and the handler's error (which Caddy would turn into a status).
func serveUI(t *testing.T, u *UI, method, target string, hdr ...string) (*httptest.ResponseRecorder, error) {
	t.Helper()
	r := httptest.NewRequest(method, target, nil)
	for i := 0; i+1 < len(hdr); i += 2 {
		r.Header.Set(hdr[i], hdr[i+1])
	}
	w := httptest.NewRecorder()
	next := caddyhttp.HandlerFunc(func(http.ResponseWriter, *http.Request) error {
		t.Errorf("%s %s: reready_ui called next", method, target)
		return nil
	})
	err := u.ServeHTTP(w, r, next)
	return w, err
}

func handlerStatus(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) {
		return he.StatusCode
	}
	return 0
}

func TestUIAPIRouting(t *testing.T) {
	tests := []struct {
		method, path string
		op           string // the path beneath api/; "" when not the API
	}{
		{"GET", "/api/deliveries", "/deliveries"},
		{"GET", "/ops/api/deliveries", "/deliveries"},
		{"GET", "/a/b/api/summary", "/summary"},
		{"GET", "/ops/api/queue", "/queue"},
		{"POST", "/ops/api/queue/1744831201-ab12/retry", "/queue/1744831201-ab12/retry"},
		{"GET", "/ops/api/queue/1744831201-ab12/retry", "/queue/1744831201-ab12/retry"}, // 405
		{"DELETE", "/ops/api/queue/1744831201-ab12", "/queue/1744831201-ab12"},
		{"GET", "/ops/api/queue/1744831201-ab12", "/queue/1744831201-ab12"}, // 405
		{"POST", "/ops/api/queue/api/retry", "/queue/api/retry"},            // an id "api": 404
		{"GET", "/api/ops/api/deliveries", "/deliveries"},                   // a prefix holding "api"
		{"GET", "/ops/api/nothing", "/nothing"},                             // serveOps answers 404
		{"GET", "/ops/", ""},
		{"GET", "/ops/api/", ""},
		{"GET", "/ops/ui.js", ""},
		{"GET", "/", ""},
		{"GET", "/api", ""},
		{"GET", "/api/ops/", ""},                // the page mounted under /api/ops/
		{"GET", "/api/ops/ui.js", ""},           // and its files
		{"GET", "/api/a/b/", ""},                // three segments after api, unrouted
		{"GET", "/ops/api/queue/x/explode", ""}, // as before the mux: not an operation
		{"GET", "/ops/api/a/b/c/d", ""},         // too deep
	}
	for _, tc := range tests {
		t.Run(tc.method+" "+tc.path, func(t *testing.T) {
			api, ok := uiAPI(httptest.NewRequest(tc.method, tc.path, nil))
			op := ""
			if ok {
				op = api.URL.Path
			}
			if op != tc.op || ok != (tc.op != "") {
				t.Fatalf("uiAPI(%q) = %q, %v; want %q", tc.path, op, ok, tc.op)
			}
		})
	}
}

// Every response, page, file, API answer or refusal, carries the security
// headers; the CSP allows no inline script.
func TestUIHeaders(t *testing.T) {
	u := newTestUI(t)
	for _, tc := range []struct{ method, target string }{
		{"GET", "/ops/"},
		{"GET", "/ops/ui.js"},
		{"GET", "/ops/api/deliveries"},
		{"POST", "/ops/api/queue/x/retry"}, // refused below: cross-site
		{"GET", "/ops/nothing.txt"},
	} {
		t.Run(tc.method+" "+tc.target, func(t *testing.T) {
			w, _ := serveUI(t, u, tc.method, tc.target, "Sec-Fetch-Site", "cross-site")
			h := w.Header()
			for k, v := range uiHeaders {
				if h.Get(k) != v {
					t.Errorf("%s = %q, want %q", k, h.Get(k), v)
				}
			}
			csp := h.Get("Content-Security-Policy")
			for _, want := range []string{"default-src 'none'", "script-src 'self'", "frame-ancestors 'none'"} {
				if !strings.Contains(csp, want) {
					t.Errorf("CSP %q lacks %q", csp, want)
				}
			}
			if strings.Contains(csp, "unsafe-inline") || strings.Contains(csp, "unsafe-eval") {
				t.Errorf("CSP %q allows inline script or eval", csp)
			}
		})
	}
}

func TestUIPageAndFiles(t *testing.T) {
	u := newTestUI(t)
	tests := []struct {
		target, ctype, contains string
	}{
		{"/", "text/html; charset=utf-8", `<script src="ui.js" defer></script>`},
		{"/ops/", "text/html; charset=utf-8", `<link rel="stylesheet" href="ui.css">`},
		{"/ops/?outcome=queued", "text/html; charset=utf-8", `<option value="dead">dead</option>`},
		{"/ops/ui.js", "text/javascript; charset=utf-8", "'use strict'"},
		{"/ops/ui.css", "text/css; charset=utf-8", ".badge"},
		{"/ops/favicon.svg", "image/svg+xml", "<svg"},
	}
	for _, tc := range tests {
		t.Run(tc.target, func(t *testing.T) {
			w, err := serveUI(t, u, "GET", tc.target)
			if err != nil || w.Code != http.StatusOK {
				t.Fatalf("status %d, error %v", w.Code, err)
			}
			if got := w.Header().Get("Content-Type"); got != tc.ctype {
				t.Errorf("Content-Type %q, want %q", got, tc.ctype)
			}
			if !strings.Contains(w.Body.String(), tc.contains) {
				t.Errorf("body lacks %q", tc.contains)
			}
			if w.Header().Get("ETag") == "" {
				t.Error("no ETag")
			}
		})
	}

	// The page: every documented state is offered with its rank, no script
	// is inline (a <script> element must have a src and no content), and no
	// style attribute or element (the CSP would block them).
	w, _ := serveUI(t, u, "GET", "/ops/")
	page := w.Body.String()
	for i, s := range verify.States {
		rank := min(i, 4)
		if want := `<option value="` + s + `" data-rank="` + string(rune('0'+rank)) + `">`; !strings.Contains(page, want) {
			t.Errorf("page lacks %s", want)
		}
	}
	for _, m := range regexp.MustCompile(`(?is)<script([^>]*)>(.*?)</script>`).FindAllStringSubmatch(page, -1) {
		if !strings.Contains(m[1], "src=") || strings.TrimSpace(m[2]) != "" {
			t.Errorf("inline script in the page: %s", m[0])
		}
	}
	if regexp.MustCompile(`(?i)<style|\sstyle=|\son[a-z]+=`).MatchString(page) {
		t.Error("the page has a style element, a style attribute or an inline event handler")
	}

	// A conditional request for an unchanged file is answered 304.
	etag := w.Header().Get("ETag")
	w2, _ := serveUI(t, u, "GET", "/ops/", "If-None-Match", etag)
	if w2.Code != http.StatusNotModified {
		t.Errorf("If-None-Match %s: status %d, want 304", etag, w2.Code)
	}
}

func TestUIRedirectsAndRefusals(t *testing.T) {
	u := newTestUI(t)
	tests := []struct {
		name, method, target string
		status               int    // written status, or the handler error's
		location             string // for a redirect
	}{
		{"slash added", "GET", "/ops", http.StatusFound, "./ops/"},
		{"query kept", "GET", "/ops?outcome=dead&return_id=r1", http.StatusFound, "./ops/?outcome=dead&return_id=r1"},
		{"escaped", "GET", "/a%3Fb", http.StatusFound, "./a%3Fb/"},
		{"file-like name", "GET", "/ops/robots.txt", http.StatusNotFound, ""},
		{"post to the page", "POST", "/ops/", http.StatusMethodNotAllowed, ""},
		{"delete a file", "DELETE", "/ops/ui.js", http.StatusMethodNotAllowed, ""},
		{"post elsewhere", "POST", "/ops/other", http.StatusNotFound, ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w, err := serveUI(t, u, tc.method, tc.target)
			status := w.Code
			if err != nil {
				status = handlerStatus(err)
			}
			if status != tc.status {
				t.Fatalf("status %d (error %v), want %d", status, err, tc.status)
			}
			if got := w.Header().Get("Location"); got != tc.location {
				t.Errorf("Location %q, want %q", got, tc.location)
			}
		})
	}
}

// apiError decodes a JSON error body.
func apiError(t *testing.T, w *httptest.ResponseRecorder) string {
	t.Helper()
	var e struct {
		Error string `json:"error"`
	}
	if ct := w.Header().Get("Content-Type"); ct != "application/json" {
		t.Fatalf("error Content-Type %q, want application/json", ct)
	}
	if err := json.Unmarshal(w.Body.Bytes(), &e); err != nil || e.Error == "" {
		t.Fatalf("error body %q: want {\"error\": ...} (%v)", w.Body.String(), err)
	}
	return e.Error
}

// The API beneath the page answers what the admin API answers (serveOps),
// with values as the raw strings they were: escaping is the page's job.
func TestUIAPIDeliveriesRawStrings(t *testing.T) {
	u := newTestUI(t)
	returnID := `<script>alert("r")</script>` + time.Now().Format(time.RFC3339Nano)
	state := `<img src=x onerror=alert(1)>&amp;"'`
	processJournal.add(journalEntry{at: time.Now(), outcome: OutcomeForwarded, status: 200, returnID: rid(returnID), state: state, verified: "hmac", key: 1})

	w, err := serveUI(t, u, "GET", "/ops/api/deliveries?return_id="+url.QueryEscape(returnID))
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("status %d, error %v", w.Code, err)
	}
	if w.Header().Get(journalHeader) != processJournal.epoch {
		t.Errorf("%s = %q, want the journal's epoch", journalHeader, w.Header().Get(journalHeader))
	}
	if w.Header().Get("Content-Type") != "application/json" || w.Header().Get("Cache-Control") != "no-store" {
		t.Errorf("Content-Type %q, Cache-Control %q", w.Header().Get("Content-Type"), w.Header().Get("Cache-Control"))
	}
	var got []Delivery
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].DeviceReturnID != returnID || got[0].State != state {
		t.Fatalf("got %+v; want one entry with the raw return id and state", got)
	}
	// Raw once decoded, and no markup in the bytes: < > & are \u escapes.
	if strings.ContainsAny(w.Body.String(), "<>") || strings.Contains(w.Body.String(), "&amp;") {
		t.Errorf("JSON body holds markup characters: %s", w.Body.String())
	}

	// The same through the admin API's function, byte for byte.
	r := httptest.NewRequest("GET", "/reready/deliveries?return_id="+url.QueryEscape(returnID), nil)
	aw := httptest.NewRecorder()
	if e := serveOps(aw, beneath(r, "/reready")); e != nil {
		t.Fatal(e.msg)
	}
	if aw.Body.String() != w.Body.String() {
		t.Errorf("admin API and page disagree:\n%s\n%s", aw.Body.String(), w.Body.String())
	}

	// Bad filters are JSON errors the page can show.
	w, _ = serveUI(t, u, "GET", "/ops/api/deliveries?outcome=nope")
	if w.Code != http.StatusBadRequest || !strings.Contains(apiError(t, w), "invalid outcome") {
		t.Errorf("bad outcome: %d %s", w.Code, w.Body.String())
	}
	w, _ = serveUI(t, u, "GET", "/ops/api/nothing")
	if w.Code != http.StatusNotFound {
		t.Errorf("unknown operation: status %d, want 404", w.Code)
	}
	apiError(t, w)
}

func TestUIAPISummary(t *testing.T) {
	u := newTestUI(t)
	w, err := serveUI(t, u, "GET", "/ops/api/summary")
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("status %d, error %v", w.Code, err)
	}
	var s Summary
	if err := json.Unmarshal(w.Body.Bytes(), &s); err != nil {
		t.Fatal(err)
	}
	if len(s.Minutes) != summaryMinutes {
		t.Fatalf("%d minutes, want %d", len(s.Minutes), summaryMinutes)
	}
	w, _ = serveUI(t, u, "POST", "/ops/api/summary", "Sec-Fetch-Site", "same-origin")
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "GET, HEAD" {
		t.Errorf("POST summary: status %d, Allow %q; want 405, GET, HEAD", w.Code, w.Header().Get("Allow"))
	}
}

// queueTestApp makes a running-app stand-in with one pending item whose
// body and signature header hold markers that must never be served.
func queueTestApp(t *testing.T) (*App, *queueItem) {
	t.Helper()
	a := testApp(t)
	now := time.Now().UTC().Truncate(time.Second)
	it := &queueItem{
		ID: "1744831201-0123456789abcdef0123456789abcdef", Status: ItemPending,
		DeviceReturnID: "<b>r-9</b>", State: verify.StateComplete, ReceivedAt: now, NextAttemptAt: &now,
		Attempts: 1, LastStatus: 503, LastError: "the app answered 503", MaxAge: int64(time.Hour),
		Server: "srv0", Host: "example.com", URI: "/hook?token=tok_MARKER_never_served", RemoteAddr: "192.0.2.1:1234",
		Header:   http.Header{"X-Reready-Signature-512": {"t=1744831201,v=MAC_MARKER_never_served"}},
		Verified: "hmac", Key: 1, Timestamp: "1744831201",
		Body: []byte(`{"device_return_id":"<b>r-9</b>","state":"complete","BODY_MARKER_never_served":1}`),
	}
	if _, err := a.queue.enqueue(context.Background(), it, 10, queueT0, nil); err != nil {
		t.Fatal(err)
	}
	prev := liveApp.Swap(a)
	t.Cleanup(func() { liveApp.Store(prev) })
	return a, it
}

func TestUIAPIQueueServesNoSecret(t *testing.T) {
	u := newTestUI(t)
	_, it := queueTestApp(t)
	w, err := serveUI(t, u, "GET", "/ops/api/queue")
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("status %d, error %v", w.Code, err)
	}
	body := w.Body.String()
	for _, marker := range []string{"MARKER", "never_served", "signature", "header", "body", "uri"} {
		if strings.Contains(strings.ToLower(body), strings.ToLower(marker)) {
			t.Errorf("the queue's JSON holds %q: %s", marker, body)
		}
	}
	var got []QueueItem
	if err := json.Unmarshal(w.Body.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0].ID != it.ID || got[0].DeviceReturnID != "<b>r-9</b>" || got[0].Status != ItemPending {
		t.Fatalf("queue %+v; want the one item, return id raw", got)
	}
}

// Mutations must be same-origin: a page on another site (even another
// port of the same host) cannot make the operator's browser retry or drop.
func TestUIMutationsSameOriginOnly(t *testing.T) {
	u := newTestUI(t)
	a, it := queueTestApp(t)
	retry := "/ops/api/queue/" + it.ID + "/retry"
	drop := "/ops/api/queue/" + it.ID

	refused := []struct {
		name, method, target string
		hdr                  []string
	}{
		{"cross-site retry", "POST", retry, []string{"Sec-Fetch-Site", "cross-site"}},
		{"same-site retry (another port)", "POST", retry, []string{"Sec-Fetch-Site", "same-site"}},
		{"cross-site drop", "DELETE", drop, []string{"Sec-Fetch-Site", "cross-site"}},
		{"old browser, other origin", "DELETE", drop, []string{"Origin", "http://evil.example"}},
		{"old browser, other port", "POST", retry, []string{"Origin", "http://example.com:8443"}},
		{"opaque origin", "DELETE", drop, []string{"Origin", "null"}},
		{"cross-site wins over a matching Origin", "DELETE", drop, []string{"Sec-Fetch-Site", "cross-site", "Origin", "http://example.com"}},
	}
	for _, tc := range refused {
		t.Run(tc.name, func(t *testing.T) {
			w, err := serveUI(t, u, tc.method, "http://example.com"+tc.target, tc.hdr...)
			if err != nil || w.Code != http.StatusForbidden {
				t.Fatalf("status %d, error %v; want 403", w.Code, err)
			}
			if msg := apiError(t, w); !strings.Contains(msg, "same origin") {
				t.Errorf("error %q does not say why", msg)
			}
			stored, err := a.queue.loadItem(context.Background(), it.ID)
			if err != nil || stored.Attempts != it.Attempts || !stored.NextAttemptAt.Equal(*it.NextAttemptAt) {
				t.Fatalf("the item changed after a refused %s: %+v, %v", tc.method, stored, err)
			}
		})
	}

	// Same origin by Sec-Fetch-Site, then by Origin for an old browser, then
	// a client that is no browser (no Sec-Fetch-Site, no Origin).
	w, err := serveUI(t, u, "POST", "http://example.com"+retry, "Sec-Fetch-Site", "same-origin")
	if err != nil || w.Code != http.StatusOK {
		t.Fatalf("same-origin retry: status %d, error %v, body %s", w.Code, err, w.Body.String())
	}
	var v QueueItem
	if err := json.Unmarshal(w.Body.Bytes(), &v); err != nil || v.ID != it.ID || v.Status != ItemPending {
		t.Fatalf("retry answered %s (%v)", w.Body.String(), err)
	}
	w, _ = serveUI(t, u, "POST", "http://example.com"+retry, "Origin", "http://example.com")
	if w.Code != http.StatusOK {
		t.Fatalf("retry with a matching Origin: status %d, %s", w.Code, w.Body.String())
	}
	w, _ = serveUI(t, u, "GET", "http://example.com"+retry, "Sec-Fetch-Site", "same-origin")
	if w.Code != http.StatusMethodNotAllowed || w.Header().Get("Allow") != "POST" {
		t.Errorf("GET retry: status %d, Allow %q; want 405, POST", w.Code, w.Header().Get("Allow"))
	}
	w, _ = serveUI(t, u, "DELETE", "http://example.com"+drop)
	if w.Code != http.StatusOK {
		t.Fatalf("drop without browser headers: status %d, %s", w.Code, w.Body.String())
	}
	if _, err := a.queue.loadItem(context.Background(), it.ID); !errors.Is(err, errItemNotFound) {
		t.Fatalf("item still stored after the drop: %v", err)
	}
	w, _ = serveUI(t, u, "DELETE", "http://example.com"+drop, "Sec-Fetch-Site", "same-origin")
	if w.Code != http.StatusNotFound {
		t.Errorf("dropping it again: status %d, want 404", w.Code)
	}
	apiError(t, w)
}

func TestUIUnmarshalCaddyfile(t *testing.T) {
	tests := []struct {
		input string
		err   string
	}{
		{"reready_ui", ""},
		{"reready_ui extra", "takes no arguments"},
		{"reready_ui {\n\tfoo\n}", "takes no options"},
	}
	for _, tc := range tests {
		t.Run(tc.input, func(t *testing.T) {
			var u UI
			err := u.UnmarshalCaddyfile(caddyfile.NewTestDispenser(tc.input))
			if tc.err == "" && err != nil || tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)) {
				t.Fatalf("error %v, want %q", err, tc.err)
			}
		})
	}
}

// Each figure says what it counts: the hour's counters are what happened
// during the hour (Summary), the queue's heading is what is stored now,
// and the chart's queued series, journal entries of outcome queued,
// includes failed redelivery attempts, which the counter does not.
func TestUILabels(t *testing.T) {
	u := newTestUI(t)
	w, _ := serveUI(t, u, "GET", "/ops/")
	page := w.Body.String()
	counters := map[string]string{}
	for _, m := range regexp.MustCompile(`<span class="num" id="c-([a-z]+)">[^<]*</span> <span class="lbl">([^<]*)</span>`).FindAllStringSubmatch(page, -1) {
		counters[m[1]] = m[2]
	}
	want := map[string]string{
		"verified": "verified",
		"rejected": "rejected",
		"queued":   "queued on arrival", // Summary.Queued: queued as they arrived, not failed redeliveries
		"dead":     "given up (dead)",
	}
	for k, v := range want {
		if counters[k] != v {
			t.Errorf("counter c-%s labelled %q, want %q", k, counters[k], v)
		}
	}
	if !strings.Contains(page, `<h2 id="hour-h">Last hour</h2>`) {
		t.Error("the counters' section is not headed Last hour")
	}
	if !strings.Contains(page, `<h2 id="queue-h" tabindex="-1">In the queue now <span id="queue-count"`) {
		t.Error("the queue's heading does not say it is the queue now")
	}
	w, _ = serveUI(t, u, "GET", "/ops/ui.js")
	if !strings.Contains(w.Body.String(), `const CHART_LABEL = { queued: 'queued on arrival', retrying: 'redelivery failed, retrying' };`) {
		t.Error("ui.js does not label the chart's queued and retrying series by what they count")
	}
}
