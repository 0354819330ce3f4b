//go:build fullsuite

package realbin

import (
	"bytes"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Store-and-forward across processes: a gateway killed with SIGKILL, and
// gateways sharing a storage acting as one queue, on Caddy's file_system
// and on Redis (backends_test.go).

// A gateway killed with SIGKILL right after its 202 redelivers the item
// once restarted on the same storage. The sender's resend meanwhile (it may
// not have seen the 202) joins the stored item instead of making another.
func TestQueueSurvivesSIGKILL(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) {
			const secret = "ssk_queue_sigkill_0b1c2d3e"
			st := newBackend(t, name)
			app := harness.NewUpstream(t)
			site := queueSite(secret, "", app.Addr)
			g1 := st.gateway(t, 0, site, secret)

			d := signEvent(t, harness.Ruby, secret, harness.NewEvent("pending_return_shipment_delivery"))
			wantQueued(t, d.post(t, g1, "/hooks/app"), d.id)
			g1.Kill(t)

			g2 := st.gateway(t, portOf(t, g1), site, secret)
			wantQueued(t, d.post(t, g2, "/hooks/app"), d.id)
			items := queueList(t, g2)
			if len(items) != 1 || items[0].str("id") != d.id || items[0].str("status") != "pending" {
				t.Fatalf("after the restart the queue lists %v, want %s pending", items, d.id)
			}
			if stored := st.items(t); len(stored) != 1 {
				t.Errorf("storage holds %v, want one item", stored)
			}

			app.Up(t)
			rec := app.WaitDelivered(t, d.id, queueTimeout)
			if !bytes.Equal(rec.Body, d.body) {
				t.Errorf("body %q, want %q", rec.Body, d.body)
			}
			wantEventHeaders(t, rec.Header, d.ev, d.ts, d.sig, attemptOf(rec), time.Unix(d.ts, 0), time.Now())
			if attemptOf(rec) < 2 {
				t.Errorf("X-ReReady-Attempt %d, want 2 or more", attemptOf(rec))
			}
			waitItem(t, g2, d.id, "", logTimeout)
			g2.WaitScans(t, 2, queueTimeout) // a whole scan since: nothing more goes out
			if n := len(app.ForID(d.id)); n != 1 {
				t.Errorf("the app got the delivery %d times, want once", n)
			}
		})
	}
}

// Killed in the middle of an attempt, a gateway leaves the item's storage
// lock behind; a gateway on the same storage takes the item once the lock
// is stale (file_system: about 10s; Redis: its 5 s TTL) and delivers it,
// with the same delivery id and attempt number: a crash mid-attempt may
// deliver twice.
func TestQueueKilledMidAttempt(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) {
			const secret = "ssk_queue_mid_attempt_4e5f"
			st := newBackend(t, name)
			app := harness.NewUpstream(t)
			site := queueSite(secret, "", app.Addr)
			g1 := st.gateway(t, 0, site, secret)

			d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
			wantQueued(t, d.post(t, g1, "/hooks/app"), d.id)
			hold := make(chan struct{})
			defer close(hold)
			var held bool
			app.SetRule(func(q *harness.Request) harness.Answer {
				if q.ID() == d.id && !held {
					held = true
					return harness.Answer{Hold: hold} // never answered: its gateway dies first
				}
				return harness.Answer{}
			})
			app.Up(t)
			harness.WaitUntil(t, "no attempt reached the app", queueTimeout, func() bool { return len(app.ForID(d.id)) == 1 })
			killed := time.Now()
			g1.Kill(t)

			g2 := st.gateway(t, portOf(t, g1), site, secret)
			rec := app.WaitDelivered(t, d.id, queueTimeout)
			t.Logf("delivered %s after the kill", rec.At.Sub(killed).Round(100*time.Millisecond))
			if n := app.Delivered(d.id); n != 1 {
				t.Errorf("delivered %d times, want 1", n)
			}
			// The same delivery id (what an app drops duplicates by). The
			// attempt number is stored only when an attempt ends, so the one
			// cut short by the kill is counted again.
			if recs := app.ForID(d.id); len(recs) != 2 || attemptOf(recs[1]) != attemptOf(recs[0]) {
				t.Errorf("the app got %d requests with id %s, attempts %d then %d; want 2, the same attempt number",
					len(recs), d.id, attemptOf(recs[0]), attemptOf(recs[len(recs)-1]))
			}
			waitItem(t, g2, d.id, "", logTimeout)
		})
	}
}

// Two gateways on one storage root and one port, as a fleet behind a load
// balancer. (a) One queues a delivery and is killed; the other lists it
// and delivers it. (b) Both running, 200 deliveries of distinct returns
// queued through both while the app is down: once it is up each is
// delivered exactly once (storage locks, and a check of the item after
// taking its lock).
func TestQueueFleet(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) { testQueueFleet(t, newBackend(t, name)) })
	}
}

func testQueueFleet(t *testing.T, st *backend) {
	const secret = "ssk_queue_fleet_6a7b8c9d"
	app := harness.NewUpstream(t)
	site := queueSite(secret, "", app.Addr)

	t.Run("delivered by the other when one is gone", func(t *testing.T) {
		g1 := st.gateway(t, 0, site, secret)
		d := signEvent(t, harness.Python, secret, harness.NewEvent("complete"))
		wantQueued(t, d.post(t, g1, "/hooks/app"), d.id)
		g2 := st.gateway(t, portOf(t, g1), site, secret)
		if it := queueItem(t, g2, d.id); it == nil {
			t.Fatalf("the other gateway does not list %s", d.id)
		}
		g1.Kill(t)
		if it := queueItem(t, g2, d.id); it == nil {
			t.Fatalf("the other gateway does not list %s", d.id)
		}
		app.Up(t)
		defer app.Down()
		app.WaitDelivered(t, d.id, queueTimeout)
		waitItem(t, g2, d.id, "", logTimeout)
		g2.WaitScans(t, 2, queueTimeout)
		if n := len(app.ForID(d.id)); n != 1 {
			t.Errorf("the app got the delivery %d times, want once", n)
		}
	})

	t.Run("each delivered once by two running gateways", func(t *testing.T) {
		const n = 200
		g1 := st.gateway(t, 0, site, secret)
		gs := []*gateway{g1, st.gateway(t, portOf(t, g1), site, secret)}
		start := time.Now()
		ids := make([]string, n)
		for i := range ids {
			d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
			wantQueued(t, d.post(t, g1, "/hooks/app"), d.id) // the port both listen on
			ids[i] = d.id
		}
		t.Logf("%d deliveries queued through two gateways on one port in %s", n, time.Since(start).Round(100*time.Millisecond))
		for i, g := range gs {
			live := 0
			for _, e := range journalQuery(t, g, "outcome=queued&limit=10000") {
				if e.str("reason") == "upstream_failed" {
					live++
				}
			}
			t.Logf("gateway %d took %d of them", i+1, live)
		}
		if got := len(queueList(t, gs[1])); got != n {
			t.Errorf("the queue lists %d items, want %d", got, n)
		}

		app.Up(t)
		up := time.Now()
		// Live successes on the shared port: each that lands on a gateway
		// makes it go at once (the other goes as its items fall due).
		for i := 0; i < 6; i++ {
			ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g1, "/hooks/app"))
		}
		harness.WaitUntil(t, "not all queued deliveries were delivered", time.Minute, func() bool {
			for _, id := range ids {
				if app.Delivered(id) == 0 {
					return false
				}
			}
			return true
		})
		t.Logf("%d deliveries redelivered by two gateways %s after the app came up", n, time.Since(up).Round(100*time.Millisecond))
		harness.WaitUntil(t, "the queue did not empty", 10*time.Second, func() bool { return len(queueList(t, gs[0])) == 0 })
		for _, g := range gs { // a whole scan since on each: no straggler
			g.WaitScans(t, 2, queueTimeout)
		}

		by := map[string]int{}
		for _, r := range app.Records() {
			by[r.ID()]++
		}
		var dups []string
		for _, id := range ids {
			if by[id] != 1 {
				dups = append(dups, fmt.Sprintf("%s×%d", id, by[id]))
			}
		}
		if len(dups) > 0 {
			t.Errorf("%d of %d deliveries did not reach the app exactly once: %s", len(dups), n, strings.Join(dups, " "))
		}
		// Who did what (the kernel spreads connections; informational).
		for i, g := range gs {
			t.Logf("gateway %d: %d live successes (kicks), %d redelivered", i+1,
				len(journalQuery(t, g, "outcome=forwarded&limit=10000")), len(journalQuery(t, g, "outcome=redelivered&limit=10000")))
		}
		if status, b := adminDo(t, gs[0], http.MethodGet, "/reready/queue"); status != 200 || strings.TrimSpace(string(b)) != "[]" {
			t.Errorf("queue after delivery: %d %s", status, b)
		}
	})
}
