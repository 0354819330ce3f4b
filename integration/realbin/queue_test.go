//go:build fullsuite

package realbin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Store-and-forward end to end on bin/caddy: what is queued and answered
// 202, redelivery until the app answers 2xx, order per device return,
// max_items, max_age, retry and drop by hand, corrupt items, and `queue`
// absent.

const queuedBody = "queued for redelivery\n"

// wantQueued checks the gateway's 202 for a stored delivery with id.
func wantQueued(t *testing.T, r reply, id string) {
	t.Helper()
	if r.status != http.StatusAccepted || r.body != queuedBody {
		t.Fatalf("reply %d %q, want 202 %q", r.status, r.body, queuedBody)
	}
	if got := r.header.Get("X-Reready-Delivery-Id"); got != id {
		t.Errorf("202 with X-ReReady-Delivery-Id %q, want %q", got, id)
	}
}

// wantEventHeaders checks the X-ReReady-* headers an app got for the
// signed delivery of ev (t ts, signature sig): the event's, the delivery
// id, and for a redelivery (attempt > 0) the attempt and the arrival time,
// within [lo, hi]; nothing else.
func wantEventHeaders(t *testing.T, h http.Header, ev harness.Event, ts int64, sig string, attempt int, lo, hi time.Time) {
	t.Helper()
	want := map[string]string{
		"X-Reready-State":            ev.State,
		"X-Reready-Device-Return-Id": ev.ID,
		"X-Reready-Test":             fmt.Sprint(ev.Test),
		"X-Reready-Url":              ev.URL(),
		"X-Reready-Verified":         "hmac",
		"X-Reready-Timestamp":        fmt.Sprint(ts),
		"X-Reready-Signature-512":    sig,
		"X-Reready-Delivery-Id":      deliveryIDOf(t, sig),
	}
	if attempt > 0 {
		want["X-Reready-Attempt"] = strconv.Itoa(attempt)
		at, err := time.Parse(time.RFC3339, h.Get("X-Reready-Received-At"))
		switch {
		case err != nil || !strings.HasSuffix(h.Get("X-Reready-Received-At"), "Z"):
			t.Errorf("X-ReReady-Received-At %q: want RFC 3339 UTC (%v)", h.Get("X-Reready-Received-At"), err)
		case at.Before(lo.Truncate(time.Second)) || at.After(hi):
			t.Errorf("X-ReReady-Received-At %s, want between %s and %s (when the gateway took it)", at, lo, hi)
		}
		want["X-Reready-Received-At"] = h.Get("X-Reready-Received-At")
	}
	for k, v := range want {
		if got := h.Values(k); len(got) != 1 || got[0] != v {
			t.Errorf("header %s = %q, want [%q]", k, got, v)
		}
	}
	for k, v := range h {
		if _, ok := want[k]; !ok && strings.HasPrefix(strings.ToLower(k), "x-reready") {
			t.Errorf("app got header %s: %q, which the gateway should not send", k, v)
		}
	}
}

// Spoofed X-ReReady-* headers a client adds to a delivery; none may reach
// the app, live or redelivered.
var spoofedQueueHeaders = []string{
	"X-ReReady-Attempt", "1",
	"X-ReReady-Received-At", "2001-01-01T00:00:00Z",
	"X-ReReady-Delivery-Id", "1-00000000000000000000000000000000",
	"X-ReReady-Verified", "hmac",
}

// The app down, then failing, then up: the delivery is answered 202 at
// once, not passed on while the app fails (its failure bodies never reach
// the sender), redelivered with backoff (a Retry-After honoured) and
// delivered exactly once, with the same delivery id and trusted headers as
// a live delivery plus X-ReReady-Attempt and X-ReReady-Received-At. A
// repeat of it is acknowledged as delivered. Once the app is back, a live
// delivery on the route makes a waiting item go at once.
func TestQueueAppDownThenUp(t *testing.T) {
	const secret = "ssk_queue_down_up_5e6f7a8b"
	app := harness.NewUpstream(t)
	g := startGateway(t, queueSite(secret, "", app.Addr), nil, secret)

	ev, body, ts, sig := signedEvent(t, harness.Ruby, secret, "pending_return_shipment_delivery")
	id := deliveryIDOf(t, sig)
	lo := time.Now()
	r := g.post(t, "/hooks/app?src=rr", body, append([]string{"X-ReReady-Signature-512", sig}, spoofedQueueHeaders...)...)
	hi := time.Now()
	wantQueued(t, r, id)

	// 503 at once (plain: backoff), then 503 with Retry-After: 1, then 200.
	var step int
	app.SetRule(func(q *harness.Request) harness.Answer {
		if q.ID() != id {
			return harness.Answer{}
		}
		step++
		switch step {
		case 1:
			return harness.Answer{Status: 503, Body: "app failure one: db down"}
		case 2:
			return harness.Answer{Status: 503, Header: map[string]string{"Retry-After": "1"}, Body: "app failure two"}
		}
		return harness.Answer{}
	})
	app.Up(t)

	t.Run("queued, and a repeat is acknowledged", func(t *testing.T) {
		it := queueItem(t, g, id)
		if it == nil {
			t.Fatalf("delivery %s is not listed in the queue", id)
		}
		if it.str("status") != "pending" || it.str("device_return_id") != ev.ID || it.str("state") != ev.State {
			t.Errorf("queue item %v, want pending %s %s", it, ev.ID, ev.State)
		}
		// The status goes with the error: the gateway's 502 for the
		// refused connection, or the app's 503 once the worker tried.
		switch ls, le := it.num("last_status"), it.str("last_error"); {
		case ls == 502 && strings.Contains(le, "HTTP 502") && strings.Contains(le, "connection refused"):
		case ls == 503 && le == "the app answered 503":
		default:
			t.Errorf("queue item last_status %d with last_error %q: want 502 for a refused connection or 503 from the app", ls, le)
		}
		e := waitJournal(t, g, id, "queued", logTimeout)
		if e.str("reason") != "upstream_failed" || e.num("status") != 202 || e.num("upstream_status") != 0 || e.num("attempt") != 1 {
			t.Errorf("journal entry %v, want queued upstream_failed 202, upstream 0, attempt 1", e)
		}
		n := len(app.ForID(id))
		alreadyDelivered(t, g.post(t, "/hooks/app?src=rr", body, "X-ReReady-Signature-512", sig))
		if len(app.ForID(id)) > n+1 { // at most the worker's own attempt meanwhile
			t.Errorf("a repeat of a queued delivery reached the app")
		}
	})

	var got harness.Request
	t.Run("redelivered until the app takes it", func(t *testing.T) {
		got = app.WaitDelivered(t, id, queueTimeout)
		recs := app.ForID(id)
		if n := app.Delivered(id); n != 1 {
			t.Fatalf("delivered %d times, want 1", n)
		}
		if len(recs) < 3 {
			t.Fatalf("the app got %d attempts, want 503, 503, 200", len(recs))
		}
		// Attempts count on from the live one: 2, 3, 4 (or later, if an
		// attempt found the app still down).
		first, _ := strconv.Atoi(recs[0].Header.Get("X-Reready-Attempt"))
		for i, rec := range recs {
			if a, _ := strconv.Atoi(rec.Header.Get("X-Reready-Attempt")); first < 2 || a != first+i {
				t.Errorf("attempt %d carried X-ReReady-Attempt %q, want %d", i+1, rec.Header.Get("X-Reready-Attempt"), first+i)
			}
		}
		// Each failed attempt is journaled as retrying (not as queued,
		// which is the delivery stored as it arrived).
		var retrying []obj
		for _, e := range journalFor(t, g, id) {
			if e.str("outcome") == "retrying" {
				retrying = append(retrying, e)
			} else if e.str("outcome") == "queued" && e.str("reason") != "upstream_failed" {
				t.Errorf("journal entry %v: a redelivery attempt journaled as queued", e)
			}
		}
		if len(retrying) < 2 {
			t.Errorf("%d retrying entries in the journal, want one per failed attempt (2 or more)", len(retrying))
		}
		for _, e := range retrying {
			if e.str("reason") != "redelivery_failed" || e.num("status") != 503 && e.num("status") != 502 {
				t.Errorf("retrying entry %v, want reason redelivery_failed with 503 (or 502 while still down)", e)
			}
		}
		last := recs[len(recs)-1]
		if last.Status != 200 || recs[len(recs)-2].Status != 503 || recs[len(recs)-3].Status != 503 {
			t.Errorf("answers %d, %d, %d; want 503, 503, 200", recs[len(recs)-3].Status, recs[len(recs)-2].Status, last.Status)
		}
		// After a plain 503 the next step of the backoff (5s ±20 %); after
		// "Retry-After: 1" about 1s, where the backoff would be 12s or more.
		if gap := recs[len(recs)-2].At.Sub(recs[len(recs)-3].At); gap < 3*time.Second {
			t.Errorf("retried %s after a plain 503; want the backoff step (about 5s)", gap)
		}
		if gap := last.At.Sub(recs[len(recs)-2].At); gap > 9*time.Second {
			t.Errorf("retried %s after Retry-After: 1; want about 1s (the backoff step would be 12-18s)", gap)
		}
		for _, rec := range recs {
			if !bytes.Equal(rec.Body, body) {
				t.Errorf("redelivered body %q, want %q byte for byte", rec.Body, body)
			}
			if rec.URI != "/hooks/app?src=rr" {
				t.Errorf("redelivered to %q, want /hooks/app?src=rr", rec.URI)
			}
		}
		a, _ := strconv.Atoi(last.Header.Get("X-Reready-Attempt"))
		wantEventHeaders(t, last.Header, ev, ts, sig, a, lo, hi)
		if cl := last.Header.Get("Content-Length"); cl != "" && cl != fmt.Sprint(len(body)) {
			t.Errorf("Content-Length %s, want %d", cl, len(body))
		}
	})

	t.Run("as a live delivery would be", func(t *testing.T) {
		ev2, body2, ts2, sig2 := signedEvent(t, harness.OpenSSL, secret, "complete")
		ok(t, g.post(t, "/hooks/app?src=rr", body2, "X-ReReady-Signature-512", sig2))
		live := app.ForID(deliveryIDOf(t, sig2))
		if len(live) != 1 {
			t.Fatalf("live delivery: the app got %d requests, want 1", len(live))
		}
		wantEventHeaders(t, live[0].Header, ev2, ts2, sig2, 0, time.Time{}, time.Time{})
		for _, k := range []string{"Host", "X-Forwarded-For", "X-Forwarded-Host", "X-Forwarded-Proto", "Content-Type"} {
			lv, rv := live[0].Header.Get(k), got.Header.Get(k)
			if k == "Host" {
				lv, rv = live[0].Host, got.Host
			}
			if lv != rv {
				t.Errorf("%s: live %q, redelivered %q; want the same", k, lv, rv)
			}
		}
	})

	t.Run("delivered once, then acknowledged", func(t *testing.T) {
		waitItem(t, g, id, "", logTimeout)
		e := waitJournal(t, g, id, "redelivered", logTimeout)
		a, _ := strconv.Atoi(got.Header.Get("X-Reready-Attempt"))
		if e.num("status") != 200 || e.num("upstream_status") != 200 || e.num("attempt") != a || e.str("reason") != "" {
			t.Errorf("journal entry %v, want redelivered 200/200 attempt %d", e, a)
		}
		n := len(app.ForID(id))
		alreadyDelivered(t, g.post(t, "/hooks/app?src=rr", body, "X-ReReady-Signature-512", sig))
		g.WaitScans(t, 2, queueTimeout) // a whole scan since: nothing more goes out
		if len(app.ForID(id)) != n || app.Delivered(id) != 1 {
			t.Errorf("after delivery the app got %d more request(s) for it", len(app.ForID(id))-n)
		}
	})

	t.Run("a live success kicks the waiting items", func(t *testing.T) {
		// The app is up but fails this one with a long Retry-After, a
		// debugging header and a revealing body: none reach the sender.
		_, body3, _, sig3 := signedEvent(t, harness.Python, secret, "complete")
		id3 := deliveryIDOf(t, sig3)
		var failed bool
		app.SetRule(func(q *harness.Request) harness.Answer {
			if q.ID() == id3 && !failed {
				failed = true
				return harness.Answer{Status: 503, Header: map[string]string{"Retry-After": "300", "X-App-Debug": "stack trace"},
					Body: "Traceback: secret internals of the app"}
			}
			return harness.Answer{}
		})
		r := g.post(t, "/hooks/app", body3, "X-ReReady-Signature-512", sig3)
		wantQueued(t, r, id3)
		if r.header.Get("X-App-Debug") != "" || r.header.Get("Retry-After") != "" {
			t.Errorf("the app's failure headers reached the sender: %v", r.header)
		}
		it := queueItem(t, g, id3)
		if it == nil || it.num("last_status") != 503 {
			t.Fatalf("queue item %v, want pending with last_status 503", it)
		}
		next, err := time.Parse(time.RFC3339, it.str("next_attempt_at"))
		if err != nil || time.Until(next) < 200*time.Second {
			t.Fatalf("next_attempt_at %q, want about 300s ahead (Retry-After: 300)", it.str("next_attempt_at"))
		}
		if e := waitJournal(t, g, id3, "queued", logTimeout); e.num("upstream_status") != 503 || e.num("status") != 202 {
			t.Errorf("journal entry %v, want queued 202 with upstream_status 503", e)
		}

		// Another return, delivered live: the route works again.
		_, body4, _, sig4 := signedEvent(t, harness.Ruby, secret, "complete")
		kicked := time.Now()
		ok(t, g.post(t, "/hooks/app", body4, "X-ReReady-Signature-512", sig4))
		rec := app.WaitDelivered(t, id3, 20*time.Second)
		if d := rec.At.Sub(kicked); d > 15*time.Second {
			t.Errorf("the waiting item went %s after a live success, want at once", d)
		}
		if !bytes.Equal(rec.Body, body3) {
			t.Errorf("body %q, want %q", rec.Body, body3)
		}
	})
}

// signed is a signed delivery of ev, ready to send.
type signed struct {
	ev   harness.Event
	body []byte
	ts   int64
	sig  string
	id   string
}

func signEvent(t *testing.T, s harness.Signer, secret string, ev harness.Event) signed {
	t.Helper()
	body := ev.Body()
	ts := now()
	sig := s.Sign(t, secret, ts, body)
	return signed{ev, body, ts, sig, deliveryIDOf(t, sig)}
}

func (d signed) post(t *testing.T, g *gateway, target string) reply {
	t.Helper()
	return g.post(t, target, d.body, "X-ReReady-Signature-512", d.sig)
}

// Order per device return: while a return has queued deliveries, later
// ones for it are queued behind them (202, reason held), even while the
// first is being redelivered; they reach the app in arrival order, each
// only after the one before it was taken. Other returns are not held up.
func TestQueueOrderPerReturn(t *testing.T) {
	const secret = "ssk_queue_order_1c2d3e4f"
	app := harness.NewUpstream(t)
	g := startGateway(t, queueSite(secret, "", app.Addr), nil, secret)
	retA, retB := harness.UUID(), harness.UUID()
	a1 := signEvent(t, harness.Ruby, secret, harness.Event{ID: retA, State: "pending_return_shipment_delivery"})
	a2 := signEvent(t, harness.OpenSSL, secret, harness.Event{ID: retA, State: "complete"})
	b1 := signEvent(t, harness.Python, secret, harness.Event{ID: retB, State: "pending_return_shipment"})

	// The app is down: A1 and B1 fail live; A2 waits behind A1.
	wantQueued(t, a1.post(t, g, "/hooks/app"), a1.id)
	wantQueued(t, a2.post(t, g, "/hooks/app"), a2.id)
	wantQueued(t, b1.post(t, g, "/hooks/app"), b1.id)
	for _, c := range []struct {
		d      signed
		reason string
	}{{a1, "upstream_failed"}, {a2, "held"}, {b1, "upstream_failed"}} {
		e := waitJournal(t, g, c.d.id, "queued", logTimeout)
		if e.str("reason") != c.reason || e.num("status") != 202 || e.str("device_return_id") != c.d.ev.ID {
			t.Errorf("%s: journal entry %v, want queued %s 202", c.d.ev.State, e, c.reason)
		}
	}
	// The queue says what is true while the app is down: A1 was tried and
	// the gateway answered 502 for it (connection refused); A2 waits
	// behind A1, with no attempt, no status and no next attempt of its own.
	if it := queueItem(t, g, a1.id); it == nil || it.num("last_status") != 502 || !strings.Contains(it.str("last_error"), "502") ||
		it["held_behind"] != nil || it["next_attempt_at"] == nil {
		t.Errorf("A1 in the queue: %v; want last_status 502 with its error, not held, a next attempt", it)
	}
	if it := queueItem(t, g, a2.id); it == nil || it.str("held_behind") != a1.id || it["last_status"] != nil ||
		it["next_attempt_at"] != nil || it.num("attempts") != 0 {
		t.Errorf("A2 in the queue: %v; want held_behind %s, last_status and next_attempt_at null, 0 attempts", it, a1.id)
	}

	// Up, but failing return A for now.
	var releaseA bool
	hold := make(chan struct{})
	defer func() {
		select {
		case <-hold:
		default:
			close(hold)
		}
	}()
	app.SetRule(func(q *harness.Request) harness.Answer {
		switch {
		case q.ReturnID() != retA:
			return harness.Answer{}
		case !releaseA:
			return harness.Answer{Status: 503}
		case q.ID() == a1.id:
			return harness.Answer{Hold: hold}
		}
		return harness.Answer{}
	})
	app.Up(t)

	t.Run("another return is not held up", func(t *testing.T) {
		app.WaitDelivered(t, b1.id, queueTimeout)
		harness.WaitUntil(t, "A1 was not attempted", queueTimeout, func() bool { return len(app.ForID(a1.id)) > 0 })
		b2 := signEvent(t, harness.Ruby, secret, harness.Event{ID: retB, State: "complete"})
		ok(t, b2.post(t, g, "/hooks/app"))
		if recs := app.ForID(b2.id); len(recs) != 1 || recs[0].Header.Get("X-Reready-Attempt") != "" {
			t.Errorf("B2 was not forwarded live: %d request(s)", len(recs))
		}
		for _, d := range []signed{a1, a2} {
			if it := queueItem(t, g, d.id); it == nil || it.str("status") != "pending" {
				t.Errorf("%s: queue item %v, want pending", d.ev.State, it)
			}
		}
		if n := len(app.ForID(a2.id)); n != 0 {
			t.Errorf("A2 was sent %d time(s) while A1 was still queued", n)
		}
	})

	var a3 signed
	t.Run("held while the first is being redelivered", func(t *testing.T) {
		app.Locked(func() { releaseA = true })
		n := len(app.ForID(a1.id))
		// A live success on the route makes A1 go now; the app holds it.
		ok(t, signEvent(t, harness.OpenSSL, secret, harness.Event{ID: harness.UUID(), State: "complete"}).post(t, g, "/hooks/app"))
		harness.WaitUntil(t, "A1 was not attempted after the kick", queueTimeout, func() bool { return len(app.ForID(a1.id)) > n })
		a3 = signEvent(t, harness.Python, secret, harness.Event{ID: retA, State: "failed"})
		wantQueued(t, a3.post(t, g, "/hooks/app"), a3.id)
		if e := waitJournal(t, g, a3.id, "queued", logTimeout); e.str("reason") != "held" {
			t.Errorf("A3 journal entry %v, want reason held", e)
		}
		if n := len(app.ForID(a3.id)); n != 0 {
			t.Errorf("A3 reached the app while A1 was in flight")
		}
		close(hold)
	})

	t.Run("A's deliveries arrive in order, once each", func(t *testing.T) {
		for _, d := range []signed{a1, a2, a3} {
			app.WaitDelivered(t, d.id, queueTimeout)
		}
		var prev harness.Request
		for i, d := range []signed{a1, a2, a3} {
			recs := app.ForID(d.id)
			if app.Delivered(d.id) != 1 {
				t.Errorf("%s delivered %d times, want 1", d.ev.State, app.Delivered(d.id))
			}
			if i > 0 && !recs[0].At.After(prev.Answered) {
				t.Errorf("%s was sent at %s, before %s was taken at %s", d.ev.State, recs[0].At, prev.Header.Get("X-Reready-State"), prev.Answered)
			}
			for _, r := range recs {
				if !bytes.Equal(r.Body, d.body) {
					t.Errorf("%s: body %q, want %q", d.ev.State, r.Body, d.body)
				}
			}
			prev = recs[len(recs)-1]
		}
		// A held delivery's first attempt is a redelivery: attempt 1.
		if got := app.ForID(a2.id)[0].Header.Get("X-Reready-Attempt"); got != "1" {
			t.Errorf("A2 (held) first attempt carried X-ReReady-Attempt %q, want 1", got)
		}
		harness.WaitUntil(t, "the queue did not empty", logTimeout, func() bool { return len(queueList(t, g)) == 0 })
	})
}

// What the app answers decides: 5xx, 408 and 429 are queued (202, the
// app's answer kept from the sender); any other answer is the app's and
// passes through, not queued.
func TestQueueWhichAnswers(t *testing.T) {
	const secret = "ssk_queue_answers_7d8e9f0a"
	app := harness.NewUpstream(t)
	g := startGateway(t, queueSite(secret, "", app.Addr), nil, secret)
	status := map[string]int{} // by delivery id, the live answer
	app.SetRule(func(q *harness.Request) harness.Answer {
		if s, ok := status[q.ID()]; ok && q.Header.Get("X-Reready-Attempt") == "" {
			return harness.Answer{Status: s, Body: fmt.Sprintf("the app's own %d body", s), Header: map[string]string{"X-App": "yes"}}
		}
		return harness.Answer{}
	})
	app.Up(t)

	var queued []signed
	for _, c := range []struct {
		status int
		queue  bool
	}{
		{500, true}, {502, true}, {503, true}, {504, true}, {408, true}, {429, true},
		{400, false}, {401, false}, {403, false}, {404, false}, {409, false}, {410, false}, {422, false},
		{200, false}, {201, false}, {204, false}, {302, false},
	} {
		d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
		app.Locked(func() { status[d.id] = c.status })
		r := d.post(t, g, "/hooks/app")
		if c.queue {
			wantQueued(t, r, d.id)
			if r.header.Get("X-App") != "" || strings.Contains(r.body, "own") {
				t.Errorf("app %d: its answer reached the sender: %v %q", c.status, r.header, r.body)
			}
			if e := waitJournal(t, g, d.id, "queued", logTimeout); e.num("upstream_status") != c.status {
				t.Errorf("app %d: journal entry %v, want upstream_status %d", c.status, e, c.status)
			}
			if queueItem(t, g, d.id) == nil && app.Delivered(d.id) == 0 {
				t.Errorf("app %d: answered 202 but neither listed nor delivered", c.status)
			}
			queued = append(queued, d)
			continue
		}
		want := fmt.Sprintf("the app's own %d body", c.status)
		if c.status == 204 {
			want = ""
		}
		if r.status != c.status || r.body != want || r.header.Get("X-App") != "yes" {
			t.Errorf("app %d: sender got %d %q (X-App %q), want the app's answer", c.status, r.status, r.body, r.header.Get("X-App"))
		}
		if it := queueItem(t, g, d.id); it != nil {
			t.Errorf("app %d: queued %v", c.status, it)
		}
		if e := waitJournal(t, g, d.id, "forwarded", logTimeout); e.num("status") != c.status || e.num("upstream_status") != c.status {
			t.Errorf("app %d: journal entry %v", c.status, e)
		}
	}
	for _, d := range queued {
		var s int
		app.Locked(func() { s = status[d.id] })
		t.Logf("waiting for the %d one", s)
		app.WaitDelivered(t, d.id, queueTimeout)
	}
	harness.WaitUntil(t, "the queue did not empty", logTimeout, func() bool { return len(queueList(t, g)) == 0 })
	for _, d := range queued {
		if n := app.Delivered(d.id); n != 1 {
			t.Errorf("%s delivered %d times", d.id, n)
		}
	}
}

// At max_items the next failed delivery is refused with 503 and
// Retry-After, journaled, not stored; a delivery held behind a queued one
// too (never forwarded out of order). Room made, the sender's retry is
// queued.
func TestQueueMaxItems(t *testing.T) {
	const secret = "ssk_queue_max_items_2b3c"
	storage := t.TempDir()
	app := harness.NewUpstream(t) // down throughout
	g := startGatewayWith(t, storageGlobal(storage), queueSite(secret, "max_items 3", app.Addr), nil, secret)

	var first []signed
	for i := 0; i < 3; i++ {
		d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
		wantQueued(t, d.post(t, g, "/hooks/app"), d.id)
		first = append(first, d)
	}
	fourth := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	held := signEvent(t, harness.OpenSSL, secret, harness.Event{ID: first[0].ev.ID, State: "failed"})
	for _, d := range []signed{fourth, held} {
		off := logOffset(g)
		r := d.post(t, g, "/hooks/app")
		wantStatus(t, r, http.StatusServiceUnavailable)
		if ra := r.header.Get("Retry-After"); ra != "60" {
			t.Errorf("Retry-After %q, want 60", ra)
		}
		waitLogSince(t, g, off, `"queue full; refusing a failed delivery with 503"`, `"max_items":3`, d.id)
		e := waitJournal(t, g, d.id, "rejected", logTimeout)
		if e.str("reason") != "queue_full" || e.num("status") != 503 || e.str("device_return_id") != d.ev.ID {
			t.Errorf("journal entry %v, want rejected queue_full 503", e)
		}
	}
	if n := len(queueFiles(t, storage)); n != 3 {
		t.Errorf("%d items stored, want 3", n)
	}
	if len(app.Records()) != 0 {
		t.Errorf("the app got requests while down?")
	}

	// Room made: the refused delivery, sent again, is queued (its replay
	// claim was released, so it is not taken for delivered).
	status, b := adminDo(t, g, http.MethodDelete, "/reready/queue/"+first[1].id)
	if status != http.StatusOK {
		t.Fatalf("DELETE: %d %s", status, b)
	}
	wantQueued(t, fourth.post(t, g, "/hooks/app"), fourth.id)
	if n := len(queueList(t, g)); n != 3 {
		t.Errorf("%d items listed, want 3", n)
	}
}

// After max_age a failing delivery is dead: kept, listed, not retried.
// Retried by hand through the API and the CLI it is delivered once the app
// is up; dropped through either it is gone and never delivered. Unknown
// ids are 404 with a JSON error (API) and exit status 1 with a clear
// message (CLI).
func TestQueueDeadRetryDrop(t *testing.T) {
	const secret = "ssk_queue_dead_4f5a6b7c"
	app := harness.NewUpstream(t)
	g := startGateway(t, queueSite(secret, "max_age 2s", app.Addr), nil, secret)
	admin := adminAddr(t, g)

	var ds []signed // retried by API, by CLI, dropped by API, by CLI
	for _, state := range []string{"complete", "failed", "not_returned", "pending_return_shipment"} {
		d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent(state))
		wantQueued(t, d.post(t, g, "/hooks/app"), d.id)
		ds = append(ds, d)
	}
	for _, d := range ds {
		it := waitItem(t, g, d.id, "dead", queueTimeout)
		if it["next_attempt_at"] != nil || it.num("attempts") < 1 || it.str("last_error") == "" {
			t.Errorf("dead item %v: want next_attempt_at null, attempts >= 1, last_error set", it)
		}
		if e := waitJournal(t, g, d.id, "dead", logTimeout); e.str("reason") != "max_age" {
			t.Errorf("journal entry %v, want dead max_age", e)
		}
	}
	g.WaitScans(t, 2, queueTimeout) // a whole scan since: dead items are not attempted
	for _, d := range ds {
		if it := queueItem(t, g, d.id); it.str("status") != "dead" {
			t.Errorf("%s: %v, want still dead", d.id, it)
		}
	}

	t.Run("list", func(t *testing.T) {
		res := caddyCmd(t, nil, "reready", "queue", "list", "--address", admin)
		if res.err != nil {
			t.Fatalf("caddy reready queue list: %v\n%s", res.err, res.output)
		}
		for _, d := range ds {
			if !regexpLine(res.output, d.id, "dead", d.ev.State, d.ev.ID) {
				t.Errorf("queue list has no row with %s dead %s %s:\n%s", d.id, d.ev.State, d.ev.ID, res.output)
			}
		}
		res = caddyCmd(t, nil, "reready", "queue", "--json", "--address", admin)
		if res.err != nil {
			t.Fatalf("caddy reready queue --json: %v\n%s", res.err, res.output)
		}
		var items []obj
		if err := json.Unmarshal([]byte(res.output), &items); err != nil {
			t.Fatalf("queue --json: %v\n%s", err, res.output)
		}
		want := []string{"id", "status", "device_return_id", "state", "test", "received_at", "attempts", "next_attempt_at", "held_behind", "last_status", "last_error", "path", "app_failing_since", "replay_id"}
		for _, it := range items {
			if got := sortedKeys(it); strings.Join(got, ",") != strings.Join(sorted(want), ",") {
				t.Errorf("queue --json item fields %v, want %v", got, sorted(want))
			}
			if _, err := time.Parse(time.RFC3339, it.str("received_at")); err != nil {
				t.Errorf("received_at %q: %v", it.str("received_at"), err)
			}
		}
		if len(items) != len(ds) {
			t.Errorf("queue --json listed %d items, want %d", len(items), len(ds))
		}
	})

	app.Up(t)

	t.Run("retry through the API", func(t *testing.T) {
		status, b := adminDo(t, g, http.MethodPost, "/reready/queue/"+ds[0].id+"/retry")
		if status != http.StatusOK {
			t.Fatalf("POST retry: %d %s", status, b)
		}
		var it obj
		if err := json.Unmarshal(b, &it); err != nil || it.str("id") != ds[0].id || it.str("status") != "pending" {
			t.Errorf("POST retry answered %s, want the item, pending", b)
		}
		rec := app.WaitDelivered(t, ds[0].id, queueTimeout)
		wantEventHeaders(t, rec.Header, ds[0].ev, ds[0].ts, ds[0].sig, attemptOf(rec), time.Unix(ds[0].ts, 0), time.Now())
		waitItem(t, g, ds[0].id, "", logTimeout)
	})

	t.Run("retry through the CLI", func(t *testing.T) {
		res := caddyCmd(t, nil, "reready", "queue", "retry", ds[1].id, "--address", admin)
		if res.err != nil || !strings.Contains(res.output, ds[1].id) || !strings.Contains(res.output, "pending") {
			t.Fatalf("caddy reready queue retry: %v\n%s", res.err, res.output)
		}
		app.WaitDelivered(t, ds[1].id, queueTimeout)
		waitItem(t, g, ds[1].id, "", logTimeout)
	})

	t.Run("drop through the API and the CLI", func(t *testing.T) {
		status, b := adminDo(t, g, http.MethodDelete, "/reready/queue/"+ds[2].id)
		if status != http.StatusOK || !strings.Contains(string(b), ds[2].id) {
			t.Fatalf("DELETE: %d %s", status, b)
		}
		res := caddyCmd(t, nil, "reready", "queue", "drop", ds[3].id, "--address", admin)
		if res.err != nil || !strings.Contains(res.output, "dropped "+ds[3].id) {
			t.Fatalf("caddy reready queue drop: %v\n%s", res.err, res.output)
		}
		if items := queueList(t, g); len(items) != 0 {
			t.Errorf("queue still lists %v", items)
		}
		// A kick (a live success) and a scan: dropped ones stay gone.
		ok(t, signEvent(t, harness.Ruby, secret, harness.NewEvent("complete")).post(t, g, "/hooks/app"))
		g.WaitScans(t, 2, queueTimeout)
		for _, d := range ds[2:] {
			if n := len(app.ForID(d.id)); n != 0 {
				t.Errorf("dropped %s reached the app %d time(s)", d.id, n)
			}
		}
		for _, d := range ds[:2] {
			if n := app.Delivered(d.id); n != 1 {
				t.Errorf("%s delivered %d times, want 1", d.id, n)
			}
		}
	})

	t.Run("unknown ids", func(t *testing.T) {
		unknown := fmt.Sprintf("%d-%032x", now(), 7)
		for _, c := range []struct{ method, path, msg string }{
			{http.MethodPost, "/reready/queue/" + unknown + "/retry", "no queued delivery"},
			{http.MethodDelete, "/reready/queue/" + unknown, "no queued delivery"},
			{http.MethodPost, "/reready/queue/" + ds[0].id + "/retry", "no queued delivery"}, // delivered: gone
			{http.MethodDelete, "/reready/queue/" + ds[2].id, "no queued delivery"},          // dropped: gone
			{http.MethodDelete, "/reready/queue/..%2f..%2fetc", ""},
		} {
			status, b := adminDo(t, g, c.method, c.path)
			wantJSONError(t, c.method+" "+c.path, status, b, http.StatusNotFound, c.msg)
		}
		for _, action := range []string{"retry", "drop"} {
			res := caddyCmd(t, nil, "reready", "queue", action, unknown, "--address", admin)
			if res.code != 1 || !strings.Contains(res.output, "no queued delivery") || !strings.Contains(res.output, unknown) {
				t.Errorf("caddy reready queue %s <unknown>: exit %d, output:\n%s\nwant exit 1 and a clear message", action, res.code, res.output)
			}
			res = caddyCmd(t, nil, "reready", "queue", action, "../../etc/passwd", "--address", admin)
			if res.code != 1 || !strings.Contains(res.output, "invalid id") {
				t.Errorf("caddy reready queue %s <bad id>: exit %d, output:\n%s", action, res.code, res.output)
			}
		}
	})
}

// attemptOf is a request's X-ReReady-Attempt.
func attemptOf(r harness.Request) int {
	n, _ := strconv.Atoi(r.Header.Get("X-Reready-Attempt"))
	return n
}

// regexpLine reports whether some line of out holds every part.
func regexpLine(out string, parts ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

func sortedKeys(o obj) []string {
	var ks []string
	for k := range o {
		ks = append(ks, k)
	}
	return sorted(ks)
}

func sorted(s []string) []string {
	out := append([]string(nil), s...)
	sort.Strings(out)
	return out
}

// A corrupt item in the storage is logged, set aside as dead with its
// error, listed, and does not stop the others; it cannot be retried, and
// it can be dropped.
func TestQueueCorruptItem(t *testing.T) {
	const secret = "ssk_queue_corrupt_8a9b0c1d"
	storage := t.TempDir()
	app := harness.NewUpstream(t)
	g := startGatewayWith(t, storageGlobal(storage), queueSite(secret, "", app.Addr), nil, secret)

	good := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	wantQueued(t, good.post(t, g, "/hooks/app"), good.id)

	items := filepath.Join(storage, "reready_verify", "queue", "items")
	bad := map[string][]byte{
		fmt.Sprintf("%d-%032x", now(), 0xbad):  []byte("not json {{{"),
		fmt.Sprintf("%d-%032x", now(), 0xbad2): nil, // truncated to nothing
		fmt.Sprintf("%d-%032x", now(), 0xbad3): []byte(`{"id":"someone-else","status":"pending"}`),
	}
	off := logOffset(g)
	for name, data := range bad {
		if err := os.WriteFile(filepath.Join(items, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	app.Up(t)

	for name := range bad {
		waitLogSince(t, g, off, `"queue: a queued delivery is corrupt; setting it aside as dead"`, name)
		it := waitItem(t, g, name, "dead", queueTimeout)
		if !strings.Contains(it.str("last_error"), "unreadable") || it["next_attempt_at"] != nil {
			t.Errorf("set-aside item %v: want dead with its error", it)
		}
		if e := waitJournal(t, g, name, "dead", logTimeout); e.str("reason") != "item_corrupt" {
			t.Errorf("journal entry %v, want dead item_corrupt", e)
		}
	}
	// Logged once each, not at every scan.
	g.WaitScans(t, 2, queueTimeout)
	for name := range bad {
		if n := strings.Count(g.Logs.String()[off:], `"id":"`+name+`"`); n != 1 {
			t.Errorf("%s logged %d times, want once", name, n)
		}
	}

	app.WaitDelivered(t, good.id, queueTimeout)
	waitItem(t, g, good.id, "", logTimeout)

	for name := range bad {
		status, b := adminDo(t, g, http.MethodPost, "/reready/queue/"+name+"/retry")
		wantJSONError(t, "retry of a corrupt item", status, b, http.StatusConflict, "set aside")
		status, b = adminDo(t, g, http.MethodDelete, "/reready/queue/"+name)
		if status != http.StatusOK {
			t.Errorf("DELETE %s: %d %s", name, status, b)
		}
	}
	if items := queueList(t, g); len(items) != 0 {
		t.Errorf("queue still lists %v", items)
	}
	if files := queueFiles(t, storage); len(files) != 0 {
		t.Errorf("storage still holds %v", files)
	}
}

// Without `queue` an app that is down is a 502, as before, and nothing is
// stored.
func TestQueueAbsent(t *testing.T) {
	const secret = "ssk_queue_absent_3d4e5f6a"
	storage := t.TempDir()
	app := harness.NewUpstream(t)
	g := startGatewayWith(t, storageGlobal(storage), fmt.Sprintf(`
	reready_verify /hooks/* {
		secret %s
	}
	reverse_proxy /hooks/* %s`, secret, app.Addr), nil, secret)

	d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	r := d.post(t, g, "/hooks/app")
	wantStatus(t, r, http.StatusBadGateway)
	if r.header.Get("X-Reready-Delivery-Id") != "" {
		t.Errorf("a 502 carried X-ReReady-Delivery-Id")
	}
	if e := waitJournal(t, g, d.id, "forwarded", logTimeout); e.num("status") != 502 || e.num("upstream_status") != 0 {
		t.Errorf("journal entry %v, want forwarded 502, upstream_status 0", e)
	}
	app.Up(t)
	app.SetRule(func(q *harness.Request) harness.Answer { return harness.Answer{Status: 503} })
	d2 := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
	wantStatus(t, d2.post(t, g, "/hooks/app"), http.StatusServiceUnavailable)
	// No worker runs that could redeliver anything.
	if m, _ := scrape(t, adminAddr(t, g)); m["caddy_reready_queue_scans_total{}"] != 0 {
		t.Errorf("a redelivery worker runs without queue: %v scans", m["caddy_reready_queue_scans_total{}"])
	}
	if n := len(app.Records()); n != 1 {
		t.Errorf("the app got %d requests, want 1 (no redelivery without queue)", n)
	}
	if _, err := os.Stat(filepath.Join(storage, "reready_verify", "queue")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("storage has reready_verify/queue without the queue option (%v)", err)
	}
	if items := queueList(t, g); len(items) != 0 {
		t.Errorf("GET /reready/queue lists %v", items)
	}
}

// A storage that cannot be used at all (its root is a file): every
// verified delivery is refused with 503 and Retry-After, whether the app
// is up or not: the gateway cannot tell whether an earlier delivery of its
// return is queued, and never answers 2xx for an event neither delivered
// nor stored. (Reads that work while writes fail, and the recovery:
// TestQueueStorageFaultsOnTheLivePath.)
func TestQueueStorageFailure(t *testing.T) {
	const secret = "ssk_queue_broken_store_5b6c"
	root := filepath.Join(t.TempDir(), "not-a-directory")
	if err := os.WriteFile(root, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	app := harness.NewUpstream(t)
	g := startGatewayWith(t, storageGlobal(root), queueSite(secret, "", app.Addr), nil, secret)
	for i, up := range []bool{false, true} {
		if up {
			app.Up(t)
		}
		d := signEvent(t, harness.Signers[i], secret, harness.NewEvent("complete"))
		off := logOffset(g)
		r := d.post(t, g, "/hooks/app")
		wantStatus(t, r, http.StatusServiceUnavailable)
		if r.header.Get("Retry-After") == "" {
			t.Error("503 without Retry-After")
		}
		waitLogSince(t, g, off, `"queue: cannot tell whether this return has queued deliveries; refusing with 503 so that its order is kept"`, d.id)
		if e := waitJournal(t, g, d.id, "rejected", logTimeout); e.str("reason") != "queue_unavailable" || e.num("status") != 503 {
			t.Errorf("journal entry %v, want rejected queue_unavailable 503", e)
		}
	}
	if n := len(app.Records()); n != 0 {
		t.Errorf("the app got %d requests", n)
	}
}

// In observe mode only verified deliveries are queued; one that failed a
// check and was passed on anyway gets the failure, and is not stored.
func TestQueueObserveMode(t *testing.T) {
	const secret = "ssk_queue_observe_7c8d9e0f"
	app := harness.NewUpstream(t)
	g := startGateway(t, fmt.Sprintf(`
	reready_verify /hooks/* {
		secret %s
		mode observe
		queue
	}
	reverse_proxy /hooks/* %s`, secret, app.Addr), nil, secret)

	forged := signEvent(t, harness.Ruby, "ssk_queue_observe_attacker", harness.NewEvent("complete"))
	wantStatus(t, forged.post(t, g, "/hooks/app"), http.StatusBadGateway)
	d := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
	wantQueued(t, d.post(t, g, "/hooks/app"), d.id)
	items := queueList(t, g)
	if len(items) != 1 || items[0].str("id") != d.id {
		t.Errorf("queue lists %v, want only %s", items, d.id)
	}
	app.Up(t)
	app.WaitDelivered(t, d.id, queueTimeout)
	if n := len(app.ForID(forged.id)); n != 0 {
		t.Errorf("the observed (forged) delivery was redelivered %d time(s)", n)
	}
}

// A redelivery goes through the route the live request took, as the
// request arrived: with `handle_path` (which rewrites the URI before the
// handler) it must reach the same app at the same rewritten path, not
// another route.
func TestQueueRewrittenRoute(t *testing.T) {
	const secret = "ssk_queue_rewrite_1e2f3a4b"
	app := harness.NewUpstream(t)
	other := harness.NewUpstream(t)
	other.Up(t)
	g := startGateway(t, fmt.Sprintf(`
	handle_path /hooks/* {
		reready_verify {
			secret %s
			queue
		}
		reverse_proxy %s
	}
	handle {
		reverse_proxy %s
	}`, secret, app.Addr, other.Addr), nil, secret)

	// The app fails the first delivery with a long Retry-After: only a
	// kick by a live success on the same route sends it again soon.
	d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	var failed bool
	app.SetRule(func(q *harness.Request) harness.Answer {
		if q.ID() == d.id && !failed {
			failed = true
			return harness.Answer{Status: 503, Header: map[string]string{"Retry-After": "300"}}
		}
		return harness.Answer{}
	})
	app.Up(t)
	wantQueued(t, d.post(t, g, "/hooks/reready?src=rr"), d.id)
	live := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
	ok(t, live.post(t, g, "/hooks/reready?src=rr"))
	liveURI := app.ForID(live.id)[0].URI

	misrouted := func() []harness.Request {
		var out []harness.Request
		for _, r := range other.Records() {
			if r.URI != "/__ready" { // the harness's readiness probe
				out = append(out, r)
			}
		}
		return out
	}
	harness.WaitUntil(t, "the queued delivery was not redelivered to the app after a live success on its route", 15*time.Second, func() bool {
		return app.Delivered(d.id) == 1 || len(misrouted()) > 0
	})
	if recs := misrouted(); len(recs) > 0 {
		t.Fatalf("the redelivery went to another route's upstream (%s), headers %v", recs[0].URI, recs[0].Header)
	}
	if got := app.ForID(d.id)[0].URI; got != liveURI {
		t.Errorf("redelivered to %q; the live delivery went to %q", got, liveURI)
	}
}

// Files in the items directory that are not named by a delivery id are not
// items: file_system writes every key through a temporary file there (its
// name all digits) and renames it. Taken for a corrupt item and set aside,
// such a file raced with the rename and overwrote a real queued delivery.
// They are neither listed, nor attempted, nor rewritten.
func TestQueueIgnoresTemporaryFiles(t *testing.T) {
	const secret = "ssk_queue_tempfiles_9d0e1f2a"
	storage := t.TempDir()
	app := harness.NewUpstream(t)
	g := startGatewayWith(t, storageGlobal(storage), queueSite(secret, "", app.Addr), nil, secret)

	d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	off := logOffset(g)
	wantQueued(t, d.post(t, g, "/hooks/app"), d.id)
	items := filepath.Join(storage, "reready_verify", "queue", "items")
	data, err := os.ReadFile(filepath.Join(items, d.id))
	if err != nil {
		t.Fatal(err)
	}
	// As a write of d's item would leave them an instant before its rename:
	// complete, and cut short.
	foreign := map[string][]byte{"1493711406": data, "2140766783": data[:len(data)/2]}
	for name, b := range foreign {
		if err := os.WriteFile(filepath.Join(items, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	g.WaitScans(t, 2, queueTimeout)
	if items := queueList(t, g); len(items) != 1 || items[0].str("id") != d.id {
		t.Errorf("the queue lists %v, want only %s", items, d.id)
	}
	for name, b := range foreign {
		if got, err := os.ReadFile(filepath.Join(items, name)); err != nil || !bytes.Equal(got, b) {
			t.Errorf("%s was changed or removed (%v)", name, err)
		}
	}
	if strings.Contains(g.Logs.String()[off:], "corrupt") {
		t.Errorf("a temporary file was taken for a corrupt item")
	}
	app.Up(t)
	app.WaitDelivered(t, d.id, queueTimeout)
	waitItem(t, g, d.id, "", logTimeout)
	if n := app.Delivered(d.id); n != 1 {
		t.Errorf("delivered %d times, want 1", n)
	}
}

// A reload can leave a queued delivery's route without reready_verify
// while the worker runs for another route. Its attempts then must not
// deliver it through the bare route (without the gateway's headers or
// delivery id, and again at every attempt, since each counts as failed):
// its body never arrives, the item stays pending with the reason. Once
// the route has the handler again, it is delivered once.
func TestQueueRouteWithoutHandler(t *testing.T) {
	const secret = "ssk_queue_no_handler_3c4d5e6f"
	app := harness.NewUpstream(t)
	app.Up(t)
	g := startGateway(t, queueSite(secret, "", app.Addr), nil, secret)
	d := signEvent(t, harness.Ruby, secret, harness.NewEvent("complete"))
	var failed bool
	app.SetRule(func(q *harness.Request) harness.Answer {
		if q.ID() == d.id && !failed {
			failed = true
			return harness.Answer{Status: 503, Header: map[string]string{"Retry-After": "1"}}
		}
		return harness.Answer{}
	})
	wantQueued(t, d.post(t, g, "/hooks/app"), d.id)

	src, err := os.ReadFile(g.Config)
	if err != nil {
		t.Fatal(err)
	}
	// The handler now only guards /other/*; /hooks/* is proxied bare.
	bare := strings.Replace(string(src), "reready_verify /hooks/*", "reready_verify /other/*", 1)
	if bare == string(src) {
		t.Fatalf("no reready_verify /hooks/* in\n%s", src)
	}
	reloadWithAPI(t, g, bare)
	n := len(app.Records())
	harness.WaitUntil(t, "no attempt was made through the bare route", queueTimeout, func() bool {
		for _, e := range journalFor(t, g, d.id) {
			if e.str("reason") == "route_unavailable" {
				return true
			}
		}
		return false
	})
	// Go's transport sends a request's line and headers before reading its
	// body, so the bare route's upstream may see those, cut short; never
	// the delivery's body.
	for _, r := range app.Records()[n:] {
		if len(r.Body) > 0 {
			t.Errorf("an attempt through a route without reready_verify reached the app: %s %q, X-ReReady-Verified %q",
				r.URI, r.Body, r.Header.Get("X-Reready-Verified"))
		}
	}
	it := queueItem(t, g, d.id)
	if it.str("status") != "pending" || !strings.Contains(it.str("last_error"), "no longer reaches reready_verify") {
		t.Errorf("queue item %v, want pending with the reason", it)
	}

	reloadWithAPI(t, g, string(src))
	kick := signEvent(t, harness.OpenSSL, secret, harness.NewEvent("complete"))
	ok(t, postAfterReload(t, g, "/hooks/app", kick.body, "X-ReReady-Signature-512", kick.sig))
	rec := app.WaitDelivered(t, d.id, 20*time.Second)
	wantEventHeaders(t, rec.Header, d.ev, d.ts, d.sig, attemptOf(rec), time.Unix(d.ts, 0), time.Now())
	waitItem(t, g, d.id, "", logTimeout)
	if n := len(app.ForID(d.id)); n != 2 { // the live 503, then this
		t.Errorf("the app got %d requests for it, want 2", n)
	}
}
