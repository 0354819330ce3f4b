//go:build fullsuite

package realbin

import (
	"encoding/json"
	"net/http"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Pause and resume across a fleet: the pause is in the shared storage, so
// a pause made on one gateway holds deliveries arriving at another at once,
// survives a restart, and a resume on any gateway sends what was held, in
// each return's order.

// pauseState is GET /reready/pause.
func pauseState(t *testing.T, g *gateway) []obj {
	t.Helper()
	status, b := adminDo(t, g, http.MethodGet, "/reready/pause")
	if status != http.StatusOK {
		t.Fatalf("GET /reready/pause: %d %s", status, b)
	}
	var s struct {
		Paused []obj `json:"paused"`
	}
	if err := json.Unmarshal(b, &s); err != nil {
		t.Fatalf("GET /reready/pause: %v\n%s", err, b)
	}
	return s.Paused
}

func TestPauseFleet(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) { testPauseFleet(t, newBackend(t, name)) })
	}
}

func testPauseFleet(t *testing.T, st *backend) {
	const secret = "ssk_pause_fleet_5e6f7a8b"
	app := harness.NewUpstream(t)
	app.Up(t) // the app is up: only the pause keeps deliveries from it
	site := queueSite(secret, "", app.Addr)
	g1 := st.gateway(t, 0, site, secret)
	g2 := st.gateway(t, 0, site, secret)

	// Pause /hooks/app on gateway 1, through the CLI.
	before := time.Now().Add(-time.Second)
	res := caddyCmdBin(t, st.bin, nil, "reready", "pause", "--path", "/hooks/app", "--address", adminAddr(t, g1))
	if res.code != 0 || !strings.Contains(res.output, "paused /hooks/app") {
		t.Fatalf("caddy reready pause: exit %d\n%s", res.code, res.output)
	}

	// Gateway 2 shows it: path, since, by.
	ps := pauseState(t, g2)
	if len(ps) != 1 || ps[0].str("path") != "/hooks/app" || !strings.HasPrefix(ps[0].str("by"), "127.0.0.1:") {
		t.Fatalf("GET /reready/pause on gateway 2: %v", ps)
	}
	since, err := time.Parse(time.RFC3339, ps[0].str("since"))
	if err != nil || since.Before(before) || since.After(time.Now()) {
		t.Fatalf("since %q: %v", ps[0].str("since"), err)
	}

	// Deliveries arriving at gateway 2 at once after the pause are held:
	// two returns, interleaved.
	retA, retB := harness.NewEvent("pending_return_shipment"), harness.NewEvent("pending_return_shipment")
	var sent []signed
	for _, ev := range []harness.Event{
		retA,
		retB,
		{ID: retA.ID, State: "pending_return_shipment_delivery"},
		{ID: retA.ID, State: "complete"},
		{ID: retB.ID, State: "complete"},
	} {
		d := signEvent(t, harness.Ruby, secret, ev)
		wantQueued(t, d.post(t, g2, "/hooks/app"), d.id)
		sent = append(sent, d)
		time.Sleep(10 * time.Millisecond)
	}
	// The first of each return is queued as paused; the later ones wait
	// behind it in their return's line (held).
	first := map[string]bool{}
	for _, d := range sent {
		reason := "held"
		if !first[d.ev.ID] {
			first[d.ev.ID], reason = true, "paused"
		}
		j := journalFor(t, g2, d.id)
		if len(j) != 1 || j[0].str("outcome") != "queued" || j[0].str("reason") != reason || j[0].num("status") != 202 {
			t.Fatalf("journal of %s: %v, want queued (%s) 202", d.id, j, reason)
		}
	}
	// Another path is not paused.
	other := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	if r := other.post(t, g2, "/hooks/other"); r.status != http.StatusOK {
		t.Fatalf("another path: %d %q, want 200 forwarded", r.status, r.body)
	}

	// A restart of gateway 1 keeps the pause; a delivery to it is held too.
	g1.Kill(t)
	g1 = st.gateway(t, 0, site, secret)
	if ps := pauseState(t, g1); len(ps) != 1 || ps[0].str("path") != "/hooks/app" || ps[0].str("since") != since.Format(time.RFC3339Nano) {
		t.Fatalf("after a restart: %v", ps)
	}
	late := signEvent(t, harness.Ruby, secret, harness.NewEvent("not_returned")) // a return with nothing queued
	wantQueued(t, late.post(t, g1, "/hooks/app"), late.id)
	if j := journalFor(t, g1, late.id); len(j) != 1 || j[0].str("reason") != "paused" {
		t.Fatalf("journal of %s on the restarted gateway: %v, want queued (paused)", late.id, j)
	}
	sent = append(sent, late)

	// Two whole scans of each gateway: nothing on the paused path reached
	// the app.
	g1.WaitScans(t, 2, queueTimeout)
	g2.WaitScans(t, 2, queueTimeout)
	for _, d := range sent {
		if n := len(app.ForID(d.id)); n != 0 {
			t.Fatalf("%s reached the app %d times while paused", d.id, n)
		}
	}
	if n := len(queueList(t, g2)); n != len(sent) {
		t.Fatalf("the queue lists %d deliveries, want %d", n, len(sent))
	}
	// Each gateway's worker has read the pause: the gauge says so.
	for _, g := range []*gateway{g1, g2} {
		m, raw := scrape(t, adminAddr(t, g))
		if m[seriesKey("caddy_reready_paused", "path", "/hooks/app")] != 1 {
			t.Fatalf("caddy_reready_paused{path=/hooks/app} is not 1:\n%s", raw)
		}
	}

	// Resume on gateway 2 (the admin API, no body: every path).
	if status, b := adminDo(t, g2, http.MethodPost, "/reready/resume"); status != http.StatusOK || !strings.Contains(string(b), `"paused":[]`) {
		t.Fatalf("POST /reready/resume: %d %s", status, b)
	}
	for _, d := range sent {
		app.WaitDelivered(t, d.id, queueTimeout)
	}
	harness.WaitUntil(t, "the queue did not empty", queueTimeout, func() bool { return len(queueList(t, g1)) == 0 })
	for _, ret := range []string{retA.ID, retB.ID} {
		var want, got []string
		for _, d := range sent {
			if d.ev.ID == ret {
				want = append(want, d.id)
			}
		}
		for _, r := range app.Records() {
			if r.ReturnID() == ret && slices.Contains(want, r.ID()) {
				got = append(got, r.ID())
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("return %s reached the app as %v, want %v (arrival order, once each)", ret, got, want)
		}
	}
	if ps := pauseState(t, g1); len(ps) != 0 {
		t.Fatalf("still paused after the resume: %v", ps)
	}
	g1.WaitScans(t, 1, queueTimeout)
	if m, raw := scrape(t, adminAddr(t, g1)); m[seriesKey("caddy_reready_paused", "path", "/hooks/app")] != 0 {
		t.Fatalf("caddy_reready_paused{path=/hooks/app} after the resume:\n%s", raw)
	}

	// Pause without a path, with the pause --status and resume CLI forms.
	res = caddyCmdBin(t, st.bin, nil, "reready", "pause", "--address", adminAddr(t, g2))
	if res.code != 0 || !strings.Contains(res.output, "paused every path") {
		t.Fatalf("caddy reready pause: exit %d\n%s", res.code, res.output)
	}
	res = caddyCmdBin(t, st.bin, nil, "reready", "pause", "--status", "--address", adminAddr(t, g1))
	if res.code != 0 || !regexp.MustCompile(`(?m)^\*\s+\S+Z\s+127\.0\.0\.1:\d+$`).MatchString(res.output) {
		t.Fatalf("caddy reready pause --status: exit %d\n%s", res.code, res.output)
	}
	res = caddyCmdBin(t, st.bin, nil, "reready", "resume", "--address", adminAddr(t, g1))
	if res.code != 0 || !strings.Contains(res.output, "nothing is paused") {
		t.Fatalf("caddy reready resume: exit %d\n%s", res.code, res.output)
	}
}

// Without a handler that queues, a pause is refused with 409: nothing
// would hold the deliveries.
func TestPauseWithoutQueue(t *testing.T) {
	const secret = "ssk_pause_noqueue_9a0b1c2d"
	g := startGateway(t, `
	reready_verify /hook {
		secret `+secret+`
	}
	respond "ok" 200`, nil, secret)
	status, b := adminDo(t, g, http.MethodPost, "/reready/pause")
	if status != http.StatusConflict || !strings.Contains(string(b), "pause needs queue on") {
		t.Fatalf("POST /reready/pause without queue: %d %s, want 409", status, b)
	}
	res := caddyCmd(t, nil, "reready", "pause", "--address", adminAddr(t, g))
	if res.code == 0 || !strings.Contains(res.output, "pause needs queue on") {
		t.Fatalf("caddy reready pause without queue: exit %d\n%s", res.code, res.output)
	}
}
