//go:build fullsuite

package realbin

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// The queue's promises under concurrent traffic, on the real binary: the
// scenario of the queue-correctness issue (returns × deliveries, one
// sender per return sending in order, all returns at once, an app that
// fails some first tries or is down), on one gateway and on two gateways
// sharing one storage and one port.

// floodDelivery is one signed delivery of the flood.
type floodDelivery struct {
	ret  string
	seq  int
	id   string
	ts   int64
	sig  string
	body []byte
}

// floodLines makes returns × per signed deliveries, per return in sending
// order. Signatures are Go's HMAC (checked against openssl once); delivery
// ids come from the independent derivation.
func floodLines(t *testing.T, secret string, returns, per int) [][]floodDelivery {
	t.Helper()
	states := []string{"pending_outbound_shipment", "pending_outbound_shipment_delivery", "pending_return_shipment",
		"pending_return_shipment_delivery", "failed", "not_returned", "complete"}
	lines := make([][]floodDelivery, returns)
	ts := now()
	for r := range lines {
		ret := harness.UUID()
		for k := range per {
			ev := harness.Event{ID: ret, State: states[k%len(states)], Extra: fmt.Sprintf(`, "seq": %d`, k)}
			body := ev.Body()
			sig := relSign(secret, ts, body)
			lines[r] = append(lines[r], floodDelivery{ret: ret, seq: k, id: deliveryIDOf(t, sig), ts: ts, sig: sig, body: body})
		}
	}
	first := lines[0][0]
	if want := harness.OpenSSL.Sign(t, secret, first.ts, first.body); want != first.sig {
		t.Fatalf("Go's signature %q differs from openssl's %q", first.sig, want)
	}
	return lines
}

// sendFlood sends every line at once, each in order, one request per
// connection (so that gateways sharing a port each get a share), and
// returns the status each delivery got. Any answer other than 200 (the
// app took it) and 202 (queued) fails the test.
func sendFlood(t *testing.T, base string, lines [][]floodDelivery) map[string]int {
	t.Helper()
	client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
	var mu sync.Mutex
	got := map[string]int{}
	var wg sync.WaitGroup
	for _, line := range lines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for _, d := range line {
				req, _ := http.NewRequest(http.MethodPost, base+"/hooks/app", bytes.NewReader(d.body))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-ReReady-Signature-512", d.sig)
				resp, err := client.Do(req)
				if err != nil {
					t.Errorf("return %s delivery %d: %v", d.ret, d.seq, err)
					return
				}
				resp.Body.Close()
				mu.Lock()
				got[d.id] = resp.StatusCode
				mu.Unlock()
				if resp.StatusCode != http.StatusOK && resp.StatusCode != http.StatusAccepted {
					t.Errorf("return %s delivery %d: answered %d, want 200 or 202", d.ret, d.seq, resp.StatusCode)
					return
				}
			}
		}()
	}
	wg.Wait()
	return got
}

// flappingRule fails the first try of about one delivery in four with
// 503, and takes everything else.
func flappingRule() func(*harness.Request) harness.Answer {
	tried := map[string]bool{}
	return func(q *harness.Request) harness.Answer {
		id := q.ID()
		first := !tried[id]
		tried[id] = true
		if sum := sha256.Sum256([]byte(id)); first && sum[0]%4 == 0 {
			return harness.Answer{Status: http.StatusServiceUnavailable}
		}
		return harness.Answer{}
	}
}

// waitAllDelivered waits until the app has taken every delivery of lines.
func waitAllDelivered(t *testing.T, app *harness.Upstream, lines [][]floodDelivery, timeout time.Duration) {
	t.Helper()
	want := 0
	for _, l := range lines {
		want += len(l)
	}
	deadline := time.Now().Add(timeout)
	for {
		took := map[string]bool{}
		for _, r := range app.Records() {
			if r.Status >= 200 && r.Status < 300 {
				took[r.ID()] = true
			}
		}
		n := 0
		for _, l := range lines {
			for _, d := range l {
				if took[d.id] {
					n++
				}
			}
		}
		if n == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("after %s the app has taken %d of %d deliveries", timeout, n, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// floodReport is what the app saw of a flood.
type floodReport struct {
	outOfOrder  int      // pairs (earlier, later) of a return where the later reached the app before the earlier was taken
	liveHeld    int      // live forwards of a return that had an earlier delivery not yet taken
	badReturns  int      // returns with at least one such pair
	notOnce     []string // deliveries the app took other than exactly once
	wrongBodies int
}

// checkFlood compares what the app received with the lines sent.
func checkFlood(t *testing.T, app *harness.Upstream, lines [][]floodDelivery) floodReport {
	t.Helper()
	type seen struct {
		first, firstLive time.Time // first request; first live one (no X-ReReady-Attempt)
		taken            time.Time // answered 2xx (the first time)
		takenN           int
		body             []byte
	}
	by := map[string]*seen{}
	for _, r := range app.Records() {
		s := by[r.ID()]
		if s == nil {
			s = &seen{first: r.At, body: r.Body}
			by[r.ID()] = s
		}
		if r.Header.Get("X-Reready-Attempt") == "" && s.firstLive.IsZero() {
			s.firstLive = r.At
		}
		if r.Status >= 200 && r.Status < 300 {
			if s.takenN == 0 {
				s.taken = r.Answered
			}
			s.takenN++
		}
	}
	var rep floodReport
	for _, line := range lines {
		bad := false
		for j, dj := range line {
			sj := by[dj.id]
			if sj == nil || sj.takenN != 1 {
				n := 0
				if sj != nil {
					n = sj.takenN
				}
				rep.notOnce = append(rep.notOnce, fmt.Sprintf("%s×%d", dj.id, n))
				continue
			}
			if !bytes.Equal(sj.body, dj.body) {
				rep.wrongBodies++
			}
			for i := range j {
				si := by[line[i].id]
				if si == nil || si.takenN == 0 {
					continue
				}
				if sj.first.Before(si.taken) {
					rep.outOfOrder++
					bad = true
				}
				if !sj.firstLive.IsZero() && sj.firstLive.Before(si.taken) {
					rep.liveHeld++
				}
			}
		}
		if bad {
			rep.badReturns++
		}
	}
	return rep
}

// flood runs one round on base and checks it: every delivery taken once,
// in order per return, never forwarded live past a pending one.
func flood(t *testing.T, base string, gs []*gateway, app *harness.Upstream, secret string, returns, per int) map[string]int {
	t.Helper()
	lines := floodLines(t, secret, returns, per)
	start := time.Now()
	answers := sendFlood(t, base, lines)
	sent := time.Since(start)
	queued := 0
	for _, s := range answers {
		if s == http.StatusAccepted {
			queued++
		}
	}
	waitAllDelivered(t, app, lines, 3*time.Minute)
	t.Logf("%d returns × %d deliveries: sent in %s (%d answered 202), all taken %s after the first was sent",
		returns, per, sent.Round(100*time.Millisecond), queued, time.Since(start).Round(100*time.Millisecond))
	harness.WaitUntil(t, "the queue did not empty", 30*time.Second, func() bool { return len(queueList(t, gs[0])) == 0 })
	rep := checkFlood(t, app, lines)
	if rep.outOfOrder > 0 || rep.liveHeld > 0 || len(rep.notOnce) > 0 || rep.wrongBodies > 0 {
		t.Errorf("%d of %d returns out of order (%d pairs), %d live forwards past a pending delivery, %d bodies changed, %d not taken exactly once: %s",
			rep.badReturns, returns, rep.outOfOrder, rep.liveHeld, rep.wrongBodies, len(rep.notOnce), strings.Join(first(rep.notOnce, 10), " "))
	}
	return answers
}

func first(s []string, n int) []string { return s[:min(n, len(s))] }

// Per-return order and exactly-once delivery with concurrent senders and
// an app that fails some first tries, repeated, on one gateway and on two
// sharing one storage root and port.
func TestQueueOrderUnderConcurrency(t *testing.T) {
	const secret = "ssk_queue_concurrency_5e6f7a8b"
	const returns, per, rounds = 50, 20, 3
	for _, name := range storages {
		for _, fleet := range []int{1, 2} {
			t.Run(fmt.Sprintf("%s, %d gateways", name, fleet), func(t *testing.T) {
				st := newBackend(t, name)
				app := harness.NewUpstream(t)
				app.SetRule(flappingRule())
				app.Up(t)
				site := queueSite(secret, "", app.Addr)
				g1 := st.gateway(t, 0, site, secret)
				gs := []*gateway{g1}
				if fleet == 2 {
					gs = append(gs, st.gateway(t, portOf(t, g1), site, secret))
				}
				for round := range rounds {
					t.Run(fmt.Sprint("round ", round+1), func(t *testing.T) {
						flood(t, g1.Base, gs, app, secret, returns, per)
					})
				}
			})
		}
	}
}

// With the app down while every return sends, only the first delivery of
// each return is tried live (and fails); every later one is held behind
// it, on whichever gateway it lands. Once the app is up, all arrive in
// order, once each.
func TestQueueHeldWhileAppDown(t *testing.T) {
	for _, name := range storages {
		t.Run(name, func(t *testing.T) { testQueueHeldWhileAppDown(t, newBackend(t, name)) })
	}
}

func testQueueHeldWhileAppDown(t *testing.T, st *backend) {
	const secret = "ssk_queue_held_down_9a0b1c2d"
	const returns, per = 50, 10
	app := harness.NewUpstream(t) // down
	site := queueSite(secret, "", app.Addr)
	g1 := st.gateway(t, 0, site, secret)
	gs := []*gateway{g1, st.gateway(t, portOf(t, g1), site, secret)}

	lines := floodLines(t, secret, returns, per)
	for id, status := range sendFlood(t, g1.Base, lines) {
		if status != http.StatusAccepted {
			t.Errorf("%s answered %d with the app down, want 202", id, status)
		}
	}
	// A queued delivery is journaled just after its 202 is flushed to the
	// sender (forward.go's enqueue), so the last entries may lag the last
	// answers by a moment: read them until every delivery has one or
	// logTimeout passes, then judge what is there.
	reasons := map[string]string{} // delivery id -> reason of its queued entry
	for deadline := time.Now().Add(logTimeout); len(reasons) < returns*per && time.Now().Before(deadline); time.Sleep(25 * time.Millisecond) {
		clear(reasons)
		for _, g := range gs {
			for _, e := range journalQuery(t, g, "outcome=queued&limit=10000") {
				if r := e.str("reason"); r == "upstream_failed" || r == "held" { // as it arrived, not a failed attempt
					reasons[e.str("delivery_id")] = r
				}
			}
		}
	}
	live := 0
	for _, line := range lines {
		for k, d := range line {
			want := "held"
			if k == 0 {
				want = "upstream_failed"
			}
			if got := reasons[d.id]; got != want {
				live++
				if live <= 5 {
					t.Errorf("return %s delivery %d: queued with reason %q, want %q", d.ret, k, got, want)
				}
			}
		}
	}
	if live > 0 {
		t.Errorf("%d of %d deliveries were not queued as they should have been", live, returns*per)
	}

	app.Up(t)
	// A live success on the shared port tells a gateway the app is back.
	ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g1, "/hooks/app"))
	waitAllDelivered(t, app, lines, 3*time.Minute)
	rep := checkFlood(t, app, lines)
	if rep.outOfOrder > 0 || len(rep.notOnce) > 0 {
		t.Errorf("%d returns out of order (%d pairs), %d not taken exactly once: %s",
			rep.badReturns, rep.outOfOrder, len(rep.notOnce), strings.Join(first(rep.notOnce, 10), " "))
	}
}
