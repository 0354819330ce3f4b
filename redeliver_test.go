package rereadyverify

import (
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// fakeApp is the app behind the route: it records what reached it and
// answers what the test says.
type fakeApp struct {
	mu     sync.Mutex
	answer func(r *http.Request) error // nil: 200
	got    []fakeRequest
}

type fakeRequest struct {
	body   string
	header http.Header
}

func (f *fakeApp) next(w http.ResponseWriter, r *http.Request) error {
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return caddyhttp.Error(http.StatusBadRequest, err)
	}
	f.mu.Lock()
	f.got = append(f.got, fakeRequest{string(b), r.Header.Clone()})
	answer := f.answer
	f.mu.Unlock()
	if answer != nil {
		return answer(r)
	}
	w.WriteHeader(http.StatusOK)
	return nil
}

func (f *fakeApp) requests() []fakeRequest {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]fakeRequest(nil), f.got...)
}

// redeliveryRig is a queue rig whose app re-enters the handler in process
// (the route: reready_verify, then the fake app), with a worker on the
// rig's clock. The test drives the worker's steps by hand.
type redeliveryRig struct {
	*replayRig
	app *fakeApp
	w   *worker
}

func newRedeliveryRig(t *testing.T) *redeliveryRig {
	t.Helper()
	rig := &redeliveryRig{replayRig: newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 100}), app: &fakeApp{}}
	a := rig.h.app
	a.clock = func() time.Time { return rig.now }
	a.routeFor = func(server string, port int) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
			ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
			if err := rig.h.ServeHTTP(w, r.WithContext(ctx), caddyhttp.HandlerFunc(rig.app.next)); err != nil {
				var he caddyhttp.HandlerError
				if errors.As(err, &he) {
					w.WriteHeader(he.StatusCode)
				}
			}
		})
	}
	rig.w = newWorker(a, a.queue, zap.NewNop())
	a.worker.Store(rig.w)
	return rig
}

// step runs what one scan would, at the rig's clock: refresh, then attempt
// each due item in turn. It returns the ids attempted.
func (rig *redeliveryRig) step(t *testing.T) []string {
	t.Helper()
	ctx := context.Background()
	if err := rig.w.refresh(ctx); err != nil {
		t.Fatal(err)
	}
	var tried []string
	for _, c := range rig.w.due(ctx, rig.now, redeliveryConcurrency) {
		tried = append(tried, c.item.ID)
		rig.w.attempt(c)
	}
	return tried
}

func (rig *redeliveryRig) journal(id string) []Delivery {
	var out []Delivery
	for _, d := range rig.h.app.journal.query(DeliveryFilter{Limit: 1000}) {
		if d.DeliveryID == id {
			out = append(out, d)
		}
	}
	return out // newest first
}

// A queued delivery goes through the route again in process: not before
// it is due, with the body byte for byte and the trusted headers, its
// attempt number, and the journal and the item say what each attempt came
// to. A later delivery of the same return waits until it is through.
func TestRedeliveryThroughTheRoute(t *testing.T) {
	rig := newRedeliveryRig(t)
	down := func(w http.ResponseWriter, r *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp 127.0.0.1:9: connect: connection refused"))
	}
	first := eventBody("ret-1", verify.StatePendingReturnShipmentDelivery)
	second := eventBody("ret-1", verify.StateComplete)
	resp, _ := rig.serve(first, rig.now.Unix(), down)
	if resp.Code != http.StatusAccepted {
		t.Fatalf("first: %d, want 202", resp.Code)
	}
	id1 := resp.Header().Get("X-Reready-Delivery-Id")
	resp, _ = rig.serve(second, rig.now.Unix(), rig.app.next)
	if resp.Code != http.StatusAccepted || len(rig.app.requests()) != 0 {
		t.Fatalf("second: %d, the app got %d; want 202 held", resp.Code, len(rig.app.requests()))
	}
	id2 := resp.Header().Get("X-Reready-Delivery-Id")

	// Not due yet (the first backoff step is about 1 s).
	if tried := rig.step(t); len(tried) != 0 {
		t.Fatalf("attempted %v before anything was due", tried)
	}

	// Due: the app answers 503 with Retry-After: 30.
	rig.now = rig.now.Add(2 * time.Second)
	rig.app.answer = func(r *http.Request) error {
		return caddyhttp.Error(http.StatusServiceUnavailable, errors.New("the app is busy"))
	}
	if tried := rig.step(t); len(tried) != 1 || tried[0] != id1 {
		t.Fatalf("attempted %v, want only %s (the second waits behind it)", tried, id1)
	}
	it := mustLoad(t, rig.h.app.queue, id1)
	if it.Attempts != 2 || it.LastStatus != 503 || it.Status != ItemPending {
		t.Fatalf("after a failed attempt: %+v", it)
	}
	if wait := it.NextAttemptAt.Sub(rig.now); wait < 4*time.Second || wait > 6*time.Second {
		t.Fatalf("next attempt in %v, want the second backoff step (5 s ±20 %%)", wait)
	}
	if j := rig.journal(id1); len(j) != 2 || j[0].Outcome != OutcomeRetrying || j[0].Reason != string(ReasonRedeliveryFailed) || j[0].Attempt != 2 {
		t.Fatalf("journal of the first: %+v", j)
	}
	if tried := rig.step(t); len(tried) != 0 {
		t.Fatalf("attempted %v again before its next attempt", tried)
	}

	// The app is back: the first goes, then the second, in order.
	rig.app.answer = nil
	rig.now = rig.now.Add(6 * time.Second)
	for range 3 {
		rig.step(t)
	}
	got := rig.app.requests()
	if len(got) != 3 {
		t.Fatalf("the app got %d requests, want 3 (a failed attempt, then both in order)", len(got))
	}
	for i, c := range []struct {
		body    []byte
		id      string
		attempt int
	}{{first, id1, 2}, {first, id1, 3}, {second, id2, 1}} {
		g := got[i]
		if g.body != string(c.body) || g.header.Get("X-Reready-Delivery-Id") != c.id ||
			g.header.Get("X-Reready-Attempt") != strconv.Itoa(c.attempt) || g.header.Get("X-Reready-Device-Return-Id") != "ret-1" {
			t.Fatalf("request %d: %q %v; want %s attempt %d", i, g.body, g.header, c.id, c.attempt)
		}
		if g.header.Get(verify.SignatureHeader) == "" {
			t.Fatalf("request %d lost the signature header", i)
		}
	}
	if items := rig.items(t); len(items) != 0 {
		t.Fatalf("%d items left, want none", len(items))
	}
	if j := rig.journal(id2); len(j) != 2 || j[0].Outcome != OutcomeRedelivered || j[0].Status != 200 || j[1].Reason != string(ReasonHeld) {
		t.Fatalf("journal of the second: %+v", j)
	}
}

// Without a route to send it through, an attempt fails as the gateway's
// 502 and the item says why; a route that answers 4xx gives it up.
func TestRedeliveryWithoutRouteOrRefused(t *testing.T) {
	rig := newRedeliveryRig(t)
	down := func(w http.ResponseWriter, r *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("refused"))
	}
	resp, _ := rig.serve(eventBody("ret-2", verify.StateComplete), rig.now.Unix(), down)
	id := resp.Header().Get("X-Reready-Delivery-Id")
	routeFor := rig.h.app.routeFor
	rig.h.app.routeFor = func(string, int) http.Handler { return nil }
	rig.now = rig.now.Add(2 * time.Second)
	rig.step(t)
	it := mustLoad(t, rig.h.app.queue, id)
	if it.LastStatus != http.StatusBadGateway || it.LastUpstream != 0 || it.Status != ItemPending || it.Attempts != 2 {
		t.Fatalf("without a route: %+v", it)
	}
	if j := rig.journal(id); j[0].Outcome != OutcomeRetrying || j[0].Reason != string(ReasonRouteUnavailable) {
		t.Fatalf("journal: %+v", j[0])
	}

	rig.h.app.routeFor = routeFor
	rig.app.answer = func(r *http.Request) error {
		return caddyhttp.Error(http.StatusGone, errors.New("no such return"))
	}
	rig.now = rig.now.Add(10 * time.Second)
	rig.step(t)
	it = mustLoad(t, rig.h.app.queue, id)
	if it.Status != ItemDead || it.LastStatus != http.StatusGone || it.NextAttemptAt != nil {
		t.Fatalf("refused by the app: %+v, want dead with 410", it)
	}
	if j := rig.journal(id); j[0].Outcome != OutcomeDead || j[0].Reason != string(ReasonAppRefused) {
		t.Fatalf("journal: %+v", j[0])
	}
}
