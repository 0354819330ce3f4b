package rereadyverify

import (
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
)

// withLiveApp makes a the running app for the test.
func withLiveApp(t *testing.T, a *App) {
	t.Helper()
	prev := liveApp.Swap(a)
	t.Cleanup(func() { liveApp.Store(prev) })
}

// adminDo runs one admin API request the way Caddy's admin server does:
// the route's handler, with an error rendered as {"error": ...}.
func adminDo(t *testing.T, method, target string) (int, http.Header, string) {
	t.Helper()
	route := AdminAPI{}.Routes()[0]
	if !strings.HasPrefix(target, route.Pattern) {
		t.Fatalf("%s is not under %s", target, route.Pattern)
	}
	rec := httptest.NewRecorder()
	err := route.Handler.ServeHTTP(rec, httptest.NewRequest(method, target, nil))
	if err != nil {
		ae, ok := err.(caddy.APIError)
		if !ok {
			t.Fatalf("%s %s: error %T %v, want a caddy.APIError", method, target, err, err)
		}
		body, _ := json.Marshal(map[string]string{"error": ae.Err.Error()})
		return ae.HTTPStatus, rec.Header(), string(body)
	}
	return rec.Code, rec.Header(), rec.Body.String()
}

func TestAdminAPIWithoutApp(t *testing.T) {
	withLiveApp(t, nil)
	code, _, body := adminDo(t, http.MethodGet, "/reready/queue")
	if code != 200 || strings.TrimSpace(body) != "[]" {
		t.Fatalf("queue without a running reready app: %d %q", code, body)
	}
	code, _, body = adminDo(t, http.MethodPost, "/reready/queue/1-00000000000000000000000000000000/retry")
	if code != 404 || !strings.Contains(body, `"error"`) {
		t.Fatalf("retry without an app: %d %q", code, body)
	}
}

func TestAdminAPI(t *testing.T) {
	a := testApp(t)
	withLiveApp(t, a)
	saved := processJournal
	processJournal = a.journal
	t.Cleanup(func() { processJournal = saved })

	ctx := context.Background()
	it := testItem(1, "ret-adm")
	it.Header.Set("Authorization", "Basic c2VjcmV0")
	it.Body = []byte(`{"device_return_id":"ret-adm","state":"complete","private":"BODY-MARKER"}`)
	mustEnqueue(t, a.queue, it, 10)
	for i, o := range []string{OutcomeForwarded, OutcomeRejected, OutcomeQueued} {
		a.record(journalEntry{at: queueT0, outcome: o, returnID: rid("ret-adm"), state: verify.StateComplete, status: 200 + i})
	}
	a.record(journalEntry{at: queueT0, outcome: OutcomeForwarded, returnID: rid("ret-test"), state: verify.StateComplete, status: 202, test: true})

	tests := []struct {
		name, method, target string
		code                 int
		contains             []string
		absent               []string
	}{
		{"deliveries", "GET", "/reready/deliveries", 200, []string{`"outcome":"queued"`, `"outcome":"forwarded"`}, nil},
		{"deliveries filtered", "GET", "/reready/deliveries?outcome=rejected&return_id=ret-adm", 200, []string{`"status":201`}, []string{`"queued"`}},
		{"deliveries limit", "GET", "/reready/deliveries?limit=1", 200, []string{`"seq":4`}, []string{`"seq":3`}},
		{"deliveries after", "GET", "/reready/deliveries?after=2", 200, []string{`"seq":3`, `"seq":4`}, []string{`"seq":2`}},
		{"only test events", "GET", "/reready/deliveries?test=true", 200, []string{`"seq":4`, `"test":true`}, []string{`"seq":3`, `"test":false`}},
		{"no test events", "GET", "/reready/deliveries?test=false", 200, []string{`"seq":1`, `"seq":3`}, []string{`"seq":4`, `"test":true`}},
		{"test and another filter", "GET", "/reready/deliveries?test=false&outcome=forwarded", 200, []string{`"seq":1`}, []string{`"seq":4`, `"seq":2`}},
		{"bad test", "GET", "/reready/deliveries?test=maybe", 400, []string{`invalid test \"maybe\"`, "true or false"}, nil},
		{"empty test: no filter", "GET", "/reready/deliveries?test=", 200, []string{`"seq":4`, `"seq":3`}, nil},
		{"bad outcome", "GET", "/reready/deliveries?outcome=lost", 400, []string{"invalid outcome", "forwarded"}, nil},
		{"bad limit", "GET", "/reready/deliveries?limit=0", 400, []string{"invalid limit"}, nil},
		{"bad after", "GET", "/reready/deliveries?after=x", 400, []string{"invalid after"}, nil},
		{"deliveries by POST", "POST", "/reready/deliveries", 405, []string{"GET"}, nil},
		{"queue", "GET", "/reready/queue", 200, []string{it.ID, `"status":"pending"`, `"next_attempt_at":"`},
			[]string{"BODY-MARKER", "Authorization", "c2VjcmV0", "hooks.example"}},
		{"unknown op", "GET", "/reready/nope", 404, []string{"not found"}, nil},
		{"retry unknown", "POST", "/reready/queue/1-00000000000000000000000000000000/retry", 404, []string{"no queued delivery"}, nil},
		{"retry bad name", "POST", "/reready/queue/..%2f..%2fx/retry", 404, []string{`"error"`}, nil},
		{"retry by GET", "GET", "/reready/queue/" + it.ID + "/retry", 405, nil, nil},
		{"drop by POST", "POST", "/reready/queue/" + it.ID, 405, nil, nil},
		{"bad action", "POST", "/reready/queue/" + it.ID + "/explode", 404, []string{"no such operation"}, nil},
		{"retry", "POST", "/reready/queue/" + it.ID + "/retry", 200, []string{`"status":"pending"`}, []string{"BODY-MARKER"}},
		{"drop", "DELETE", "/reready/queue/" + it.ID, 200, []string{it.ID}, []string{"BODY-MARKER"}},
		{"drop again", "DELETE", "/reready/queue/" + it.ID, 404, []string{"no queued delivery"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, hdr, body := adminDo(t, tc.method, tc.target)
			if code != tc.code {
				t.Fatalf("%d %s, want %d", code, body, tc.code)
			}
			if code == 200 && hdr.Get("Content-Type") != "application/json" {
				t.Fatalf("Content-Type %q", hdr.Get("Content-Type"))
			}
			for _, s := range tc.contains {
				if !strings.Contains(body, s) {
					t.Errorf("answer %s lacks %q", body, s)
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(body, s) {
					t.Errorf("answer %s holds %q", body, s)
				}
			}
		})
	}
	if a.queue.storage.Exists(ctx, itemKey(it.ID)) {
		t.Fatal("dropped item still stored")
	}
}
