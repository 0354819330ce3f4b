package browser

import (
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The queue view reads the fields of GET /reready/queue that a held item
// and an item never attempted carry (held_behind, last_status null), and
// still reads the listing without them. The page is served through a
// proxy to a real gateway that answers the queue's listing itself, from a
// fixed JSON: a gateway cannot be made to hold these states on demand.
func TestPageQueueHeldItems(t *testing.T) {
	const secret = "ssk_browser_held_8f7e6d5c"
	a := harness.StartUpstream(t)
	g := startGatewayMaxAge(t, a, secret, "1h")
	target, err := url.Parse(g.Base)
	if err != nil {
		t.Fatal(err)
	}
	next := time.Now().Add(time.Hour).UTC().Format(time.RFC3339)
	const first = "1796354632-8f80b9fb96c1fe571666e92770c07c78"
	listing := `[
	{"id": "` + first + `", "status": "pending", "device_return_id": "r-1", "state": "pending_return_shipment", "test": false,
	 "received_at": "2026-12-04T03:00:00Z", "attempts": 1, "next_attempt_at": "` + next + `", "last_status": 502,
	 "last_error": "HTTP 502: connection refused", "path": "/hook", "app_failing_since": null, "held_behind": null},
	{"id": "1796354633-0123456789abcdef0123456789abcdef", "status": "pending", "device_return_id": "r-1", "state": "complete", "test": false,
	 "received_at": "2026-12-04T03:00:01Z", "attempts": 0, "next_attempt_at": "` + next + `", "last_status": null,
	 "last_error": "", "path": "/hook", "app_failing_since": null, "held_behind": "` + first + `"},
	{"id": "1796354634-fedcba9876543210fedcba9876543210", "status": "pending", "device_return_id": "r-2", "state": "complete", "test": false,
	 "received_at": "2026-12-04T03:00:02Z", "attempts": 0, "next_attempt_at": "` + next + `", "last_status": 0,
	 "last_error": "", "path": "/hook", "app_failing_since": null},
	{"id": "1796354635-00112233445566778899aabbccddeeff", "status": "dead", "device_return_id": "r-3", "state": "failed", "test": false,
	 "received_at": "2026-12-04T03:00:03Z", "attempts": 3, "next_attempt_at": null, "last_status": 410,
	 "last_error": "the app answered 410", "path": "/hook", "app_failing_since": null}
]`
	proxy := &httputil.ReverseProxy{Rewrite: func(r *httputil.ProxyRequest) { r.SetURL(target) }}
	stub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/ops/api/queue" {
			w.Header().Set("Content-Type", "application/json")
			w.Write([]byte(listing))
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer stub.Close()

	ctx := newBrowser(t, 1280, 1000)
	open(t, ctx, stub.URL+"/ops/")
	cell := func(id, label, want string) string {
		return rowWhere("#queue", map[string]string{"Delivery id": id, label: want})
	}
	waitJS(t, ctx, "the first in line: its next attempt and the gateway's 502", cell(first, "Last status", "502")+` && !`+cell(first, "Next attempt", "—")+
		` && !(`+rowsJS+`('#queue')).find((r) => r['Delivery id'] === `+jsString(first)+`)['Next attempt'].startsWith('held')`)
	waitJS(t, ctx, "the held item: held behind the first, no status", cell("1796354633-0123456789abcdef0123456789abcdef", "Next attempt", "held behind 8f80b9fb")+
		` && `+cell("1796354633-0123456789abcdef0123456789abcdef", "Last status", "—"))
	var title string
	evalJS(t, ctx, `document.querySelector('#queue tr[data-id="1796354633-0123456789abcdef0123456789abcdef"] .held').title`, &title)
	if title != "Delivery "+first {
		t.Errorf("the held item's short id has title %q, want the whole id", title)
	}
	waitJS(t, ctx, "an item of the old listing (no held_behind, last_status 0): its next attempt, no status", cell("1796354634-fedcba9876543210fedcba9876543210", "Last status", "—")+
		` && !`+cell("1796354634-fedcba9876543210fedcba9876543210", "Next attempt", "—")+
		` && !(`+rowsJS+`('#queue')).find((r) => r['Delivery id'] === '1796354634-fedcba9876543210fedcba9876543210')['Next attempt'].startsWith('held')`)
	waitJS(t, ctx, "the dead item", cell("1796354635-00112233445566778899aabbccddeeff", "Next attempt", "none: retry by hand")+
		` && `+cell("1796354635-00112233445566778899aabbccddeeff", "Last status", "410"))
	noViolations(t, ctx)
}
