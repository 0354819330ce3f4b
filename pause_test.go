package rereadyverify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// adminDoBody runs one admin API request with a body, from remote.
func adminDoBody(t *testing.T, method, target, body, remote string) (int, string) {
	t.Helper()
	route := AdminAPI{}.Routes()[0]
	rec := httptest.NewRecorder()
	req := httptest.NewRequest(method, target, strings.NewReader(body))
	req.RemoteAddr = remote
	if err := route.Handler.ServeHTTP(rec, req); err != nil {
		var ae caddy.APIError
		if !errors.As(err, &ae) {
			t.Fatalf("%s %s: error %T %v", method, target, err, err)
		}
		return ae.HTTPStatus, ae.Err.Error()
	}
	return rec.Code, rec.Body.String()
}

// serveAt is replayRig.serve for a request to path.
func (rig *replayRig) serveAt(path string, body []byte, next caddyhttp.HandlerFunc) *httptest.ResponseRecorder {
	req := httptest.NewRequest(http.MethodPost, path, bytes.NewReader(body))
	req.Header.Set(verify.SignatureHeader, verify.Sign(testSecret, rig.now, body))
	ctx := context.WithValue(req.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer())
	ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
	resp := httptest.NewRecorder()
	if err := rig.h.ServeHTTP(resp, req.WithContext(ctx), next); err != nil {
		var he caddyhttp.HandlerError
		if errors.As(err, &he) {
			resp.Code = he.StatusCode
		}
	}
	return resp
}

func mustPause(t *testing.T, q *queue, path string) PauseState {
	t.Helper()
	s, err := q.pause(context.Background(), path, time.Unix(1744831201, 0), "test")
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func decodeState(t *testing.T, body string) PauseState {
	t.Helper()
	var s PauseState
	if err := json.Unmarshal([]byte(body), &s); err != nil {
		t.Fatalf("answer %q: %v", body, err)
	}
	return s
}

// A delivery on a paused path is stored and answered 202 (journal:
// queued, reason paused), not forwarded; a delivery on another path is
// forwarded as before.
func TestPausedPathIsQueuedNotForwarded(t *testing.T) {
	rig := newRedeliveryRig(t)
	a := rig.h.app
	a.queueOn = true
	withLiveApp(t, a)
	if code, body := adminDoBody(t, http.MethodPost, "/reready/pause", `{"path": "/hook"}`, "192.0.2.9:4711"); code != 200 {
		t.Fatalf("pause: %d %s", code, body)
	}

	resp := rig.serveAt("/hook", eventBody("ret-1", verify.StatePendingReturnShipment), rig.app.next)
	if resp.Code != http.StatusAccepted || resp.Body.String() != "queued for redelivery\n" || len(rig.app.requests()) != 0 {
		t.Fatalf("paused path: %d %q, the app got %d; want 202 and nothing forwarded", resp.Code, resp.Body, len(rig.app.requests()))
	}
	id := resp.Header().Get("X-Reready-Delivery-Id")
	if it := mustLoad(t, a.queue, id); it.Status != ItemPending || it.Attempts != 0 {
		t.Fatalf("stored %+v", it)
	}
	j := rig.journal(id)
	if len(j) != 1 || j[0].Outcome != OutcomeQueued || j[0].Reason != string(ReasonPaused) || j[0].Status != 202 {
		t.Fatalf("journal: %+v", j)
	}

	resp = rig.serveAt("/other", eventBody("ret-2", verify.StatePendingReturnShipment), rig.app.next)
	if resp.Code != http.StatusOK || len(rig.app.requests()) != 1 {
		t.Fatalf("other path: %d, the app got %d; want 200 forwarded", resp.Code, len(rig.app.requests()))
	}

	// A pause of every path holds /other too.
	if code, body := adminDoBody(t, http.MethodPost, "/reready/pause", "", "192.0.2.9:4711"); code != 200 {
		t.Fatalf("pause all: %d %s", code, body)
	}
	resp = rig.serveAt("/other", eventBody("ret-3", verify.StatePendingReturnShipment), rig.app.next)
	if resp.Code != http.StatusAccepted || len(rig.app.requests()) != 1 {
		t.Fatalf("other path under a pause of every path: %d, the app got %d; want 202", resp.Code, len(rig.app.requests()))
	}
}

// GET /reready/pause shows each paused path, since when and by whom;
// pausing again keeps the first since; a path is validated.
func TestPauseAdminAPI(t *testing.T) {
	a := testApp(t)
	a.queueOn = true
	now := time.Date(2026, 4, 16, 19, 20, 1, 0, time.UTC)
	a.clock = func() time.Time { return now }
	withLiveApp(t, a)
	code, body := adminDoBody(t, http.MethodGet, "/reready/pause", "", "")
	if code != 200 || strings.TrimSpace(body) != `{"paused":[]}` {
		t.Fatalf("nothing paused: %d %s", code, body)
	}
	adminDoBody(t, http.MethodPost, "/reready/pause", `{"path":"/webhooks/reready"}`, "192.0.2.9:4711")
	now = now.Add(time.Minute)
	code, body = adminDoBody(t, http.MethodPost, "/reready/pause", `{"path":"/webhooks/reready"}`, "198.51.100.1:1")
	if code != 200 {
		t.Fatalf("pause again: %d %s", code, body)
	}
	_, body = adminDoBody(t, http.MethodGet, "/reready/pause", "", "")
	s := decodeState(t, body)
	want := Pause{Path: "/webhooks/reready", Since: now.Add(-time.Minute), By: "192.0.2.9:4711"}
	if len(s.Paused) != 1 || s.Paused[0] != want {
		t.Fatalf("state %+v, want %+v", s, want)
	}
	for _, bad := range []string{`{"path":"webhooks"}`, `{"path":"/a?b=1"}`, `{"path":`, `[1]`} {
		if code, msg := adminDoBody(t, http.MethodPost, "/reready/pause", bad, ""); code != 400 {
			t.Errorf("body %s: %d %s, want 400", bad, code, msg)
		}
	}
	// Resuming another path leaves it; resuming with no path ends it.
	_, body = adminDoBody(t, http.MethodPost, "/reready/resume", `{"path":"/other"}`, "")
	if s := decodeState(t, body); len(s.Paused) != 1 {
		t.Fatalf("after resuming another path: %s", body)
	}
	_, body = adminDoBody(t, http.MethodPost, "/reready/resume", ``, "")
	if s := decodeState(t, body); len(s.Paused) != 0 {
		t.Fatalf("after resuming every path: %s", body)
	}
	if a.queue.storage.Exists(context.Background(), pauseKey) {
		t.Fatal("the pause record is left after everything was resumed")
	}
}

// Without a handler that queues, a pause would hold nothing: 409, and
// nothing is stored. A resume still works (a pause left by an earlier
// config can be ended).
func TestPauseNeedsQueue(t *testing.T) {
	a := testApp(t)
	withLiveApp(t, a)
	code, msg := adminDoBody(t, http.MethodPost, "/reready/pause", `{"path":"/hook"}`, "")
	if code != http.StatusConflict || !strings.HasPrefix(msg, "pause needs queue on: ") {
		t.Fatalf("pause without queue: %d %q, want 409 pause needs queue on", code, msg)
	}
	if s, err := a.queue.loadPause(context.Background()); err != nil || len(s.Paused) != 0 {
		t.Fatalf("state after a refused pause: %+v %v", s, err)
	}
	mustPause(t, a.queue, "/hook")
	if code, msg := adminDoBody(t, http.MethodPost, "/reready/resume", "", ""); code != 200 {
		t.Fatalf("resume without queue: %d %s", code, msg)
	}
	withLiveApp(t, nil)
	if code, _ := adminDoBody(t, http.MethodPost, "/reready/pause", "", ""); code != http.StatusConflict {
		t.Fatalf("pause without an app: %d, want 409", code)
	}
}

// The worker attempts nothing of a paused path, due or not; after a
// resume it sends what was held, in each return's order, and a delivery
// that had failed before the pause (its next attempt far off) goes at
// once too. The gauge says what is paused.
func TestWorkerHoldsPausedAndResumeDrainsInOrder(t *testing.T) {
	rig := newRedeliveryRig(t)
	a := rig.h.app
	a.queueOn = true
	reg := prometheus.NewRegistry()
	m, err := registerMetrics(reg)
	if err != nil {
		t.Fatal(err)
	}
	a.metrics = m
	withLiveApp(t, a)

	// ret-0, on another path, failed before the pause.
	busy := func(w http.ResponseWriter, r *http.Request) error {
		w.Header().Set("Retry-After", "120")
		w.WriteHeader(http.StatusServiceUnavailable)
		return nil
	}
	first := rig.serveAt("/slow", eventBody("ret-0", verify.StatePendingReturnShipment), busy)
	if first.Code != 202 {
		t.Fatalf("failed delivery: %d", first.Code)
	}
	// Its next attempt is an hour off (the live attempt's start is on the
	// real clock: set it on the rig's).
	it0 := mustLoad(t, a.queue, first.Header().Get("X-Reready-Delivery-Id"))
	it0.NextAttemptAt = new(rig.now.Add(time.Hour))
	it0.LastAttemptAt = new(rig.now.Add(-time.Second))
	if err := a.queue.storeItem(context.Background(), it0); err != nil {
		t.Fatal(err)
	}
	mustPause(t, a.queue, "/hook")
	var ids []string
	for _, d := range []struct{ ret, state string }{
		{"ret-1", verify.StatePendingReturnShipment},
		{"ret-2", verify.StatePendingReturnShipment},
		{"ret-1", verify.StatePendingReturnShipmentDelivery},
		{"ret-1", verify.StateComplete},
		{"ret-2", verify.StateComplete},
	} {
		rig.now = rig.now.Add(time.Second)
		resp := rig.serveAt("/hook", eventBody(d.ret, d.state), rig.app.next)
		if resp.Code != 202 {
			t.Fatalf("%s %s: %d", d.ret, d.state, resp.Code)
		}
		ids = append(ids, resp.Header().Get("X-Reready-Delivery-Id"))
	}
	for range 3 {
		rig.now = rig.now.Add(5 * time.Minute) // everything on /hook due
		if tried := rig.step(t); len(tried) != 0 {
			t.Fatalf("attempted %v while paused", tried)
		}
	}
	if n := len(rig.app.requests()); n != 0 {
		t.Fatalf("the app got %d requests while paused", n)
	}
	if g := toFloat64(t, m.paused.WithLabelValues("/hook")); g != 1 {
		t.Fatalf("caddy_reready_paused{path=/hook} = %v while paused", g)
	}

	// An attempt chosen before a pause is not made after it.
	code, _ := adminDoBody(t, http.MethodPost, "/reready/resume", "", "")
	if code != 200 {
		t.Fatalf("resume: %d", code)
	}
	if err := rig.w.refresh(context.Background()); err != nil {
		t.Fatal(err)
	}
	cands := rig.w.due(context.Background(), rig.now, redeliveryConcurrency)
	if len(cands) == 0 {
		t.Fatal("nothing due after the resume")
	}
	mustPause(t, a.queue, pauseAll)
	for _, c := range cands {
		rig.w.attempt(c)
	}
	if n := len(rig.app.requests()); n != 0 {
		t.Fatalf("the app got %d requests: an attempt chosen before the pause was made after it", n)
	}
	rig.step(t)
	if g := toFloat64(t, m.paused.WithLabelValues(pauseAll)); g != 1 || collectAndCount(m.paused) != 1 {
		t.Fatalf("caddy_reready_paused: * = %v, %d series", g, collectAndCount(m.paused))
	}

	// ret-0 (on /slow) is not due for most of an hour: the resume of
	// every path makes it due now, as a live success on its path would.
	rig.now = rig.now.Add(time.Second)
	if code, _ := adminDoBody(t, http.MethodPost, "/reready/resume", "", ""); code != 200 {
		t.Fatal("resume")
	}
	for range 6 {
		rig.step(t)
	}
	if items := rig.items(t); len(items) != 0 {
		t.Fatalf("%d items left after the resume: %+v, now %v", len(items), *items[0], rig.now)
	}
	var got []string
	for _, r := range rig.app.requests() {
		got = append(got, r.header.Get("X-Reready-Delivery-Id"))
	}
	byReturn := func(ret int, want ...string) {
		t.Helper()
		var order []string
		for _, id := range got {
			if slices.Contains(want, id) {
				order = append(order, id)
			}
		}
		if !slices.Equal(order, want) {
			t.Fatalf("ret-%d delivered as %v, want %v", ret, order, want)
		}
	}
	if len(got) != 6 {
		t.Fatalf("the app got %v, want 6 deliveries", got)
	}
	byReturn(1, ids[0], ids[2], ids[3])
	byReturn(2, ids[1], ids[4])
	if collectAndCount(m.paused) != 0 {
		t.Fatalf("caddy_reready_paused has %d series after the resume", collectAndCount(m.paused))
	}
}

// The pause is in the storage: a new app on the same storage (a restart,
// or another gateway) holds deliveries at once, even one that has just
// read the state as "not paused".
func TestPauseSurvivesANewApp(t *testing.T) {
	dir := t.TempDir()
	gw := func() *replayRig {
		rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 100})
		rig.h.app.queue = newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop())
		return rig
	}
	one, two := gw(), gw()
	forwarded := 0
	next := func(w http.ResponseWriter, r *http.Request) error { forwarded++; return nil }
	if resp := two.serveAt("/hook", eventBody("ret-1", verify.StatePendingReturnShipment), next); resp.Code != 200 || forwarded != 1 {
		t.Fatalf("before the pause: %d", resp.Code)
	}
	mustPause(t, one.h.app.queue, "/hook")
	if resp := two.serveAt("/hook", eventBody("ret-1", verify.StateComplete), next); resp.Code != 202 || forwarded != 1 {
		t.Fatalf("the other gateway, after the pause: %d, forwarded %d; want 202", resp.Code, forwarded)
	}
	three := gw() // a restart
	if resp := three.serveAt("/hook", eventBody("ret-2", verify.StateComplete), next); resp.Code != 202 || forwarded != 1 {
		t.Fatalf("after a restart: %d, forwarded %d; want 202", resp.Code, forwarded)
	}
	s, err := three.h.app.queue.loadPause(context.Background())
	if p, ok := s.has("/hook"); err != nil || !ok || p.By != "test" {
		t.Fatalf("state read by a new app: %+v %v", s, err)
	}
}

// Pause and resume writers on two gateways of one storage at once: none
// loses another's update.
func TestPauseConcurrentWriters(t *testing.T) {
	dir := t.TempDir()
	qs := []*queue{
		newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop()),
		newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop()),
	}
	ctx := context.Background()
	for i := range 10 {
		if _, err := qs[i%2].pause(ctx, fmt.Sprintf("/r%d", i), time.Now(), "setup"); err != nil {
			t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	errs := make(chan error, 40)
	for i := range 20 {
		wg.Go(func() {
			_, err := qs[i%2].pause(ctx, fmt.Sprintf("/p%d", i), time.Now(), "writer")
			errs <- err
		})
	}
	for i := range 10 {
		wg.Go(func() {
			_, err := qs[(i+1)%2].resume(ctx, fmt.Sprintf("/r%d", i))
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	s, err := qs[0].loadPause(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var want []string
	for i := range 20 {
		want = append(want, fmt.Sprintf("/p%d", i))
	}
	slices.Sort(want)
	if got := s.paths(); !slices.Equal(got, want) {
		t.Fatalf("paused %v\nwant %v", got, want)
	}
}

// An unreadable record holds every path (the gateway cannot tell what was
// paused); a resume of every path replaces it.
func TestPauseCorruptRecord(t *testing.T) {
	q, _ := testQueue(t)
	ctx := context.Background()
	if err := q.storage.Store(ctx, pauseKey, []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	s, err := q.loadPause(ctx)
	if _, paused := s.covers("/anything"); err != nil || !paused {
		t.Fatalf("unreadable record: %+v %v; want every path paused", s, err)
	}
	if s, err = q.resume(ctx, pauseAll); err != nil || len(s.Paused) != 0 {
		t.Fatalf("resume: %+v %v", s, err)
	}
}

// A handler without `queue` forwards a delivery on a paused path, and
// warns once per path.
func TestPauseWithoutQueueWarnsOnce(t *testing.T) {
	rig := newReplayRig(t)
	core, logs := observer.New(zap.WarnLevel)
	rig.h.logger = zap.New(core)
	mustPause(t, rig.h.app.queue, "/hook")
	forwarded := 0
	next := func(w http.ResponseWriter, r *http.Request) error { forwarded++; return nil }
	for i := range 3 {
		if resp := rig.serveAt("/hook", eventBody(fmt.Sprint("ret-", i), verify.StateComplete), next); resp.Code != 200 {
			t.Fatalf("%d", resp.Code)
		}
	}
	rig.serveAt("/other", eventBody("ret-x", verify.StateComplete), next)
	if forwarded != 4 {
		t.Fatalf("forwarded %d, want 4", forwarded)
	}
	if n := logs.FilterMessageSnippet("paused path is forwarded").Len(); n != 1 {
		t.Fatalf("%d warnings, want 1: %v", n, logs.All())
	}
}

// A storage that cannot say whether a path is paused: the delivery is
// refused 503 (not forwarded: that could break the pause).
func TestPauseCheckFails(t *testing.T) {
	rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 100})
	rig.h.app.queue = newQueue(&faultyPauseStorage{Storage: &certmagic.FileStorage{Path: t.TempDir()}}, zap.NewNop())
	forwarded := 0
	resp := rig.serveAt("/hook", eventBody("ret-1", verify.StateComplete), func(w http.ResponseWriter, r *http.Request) error { forwarded++; return nil })
	if resp.Code != 503 || forwarded != 0 {
		t.Fatalf("%d, forwarded %d; want 503 and nothing forwarded", resp.Code, forwarded)
	}
}

// faultyPauseStorage fails every load of the pause record; it is not a
// *certmagic.FileStorage, so no directory probe answers first.
type faultyPauseStorage struct{ certmagic.Storage }

func (s *faultyPauseStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if key == pauseKey {
		return nil, errors.New("injected storage fault")
	}
	return s.Storage.Load(ctx, key)
}

// BenchmarkPausedLive is the live path's pause check alone: nothing paused
// (file_system: one fstatat), and another path paused (a read and a
// parse of the record).
func BenchmarkPausedLive(b *testing.B) {
	for _, paused := range []string{"", "/other"} {
		b.Run("paused="+paused, func(b *testing.B) {
			a := testApp(b)
			if paused != "" {
				if _, err := a.queue.pause(context.Background(), paused, time.Now(), "bench"); err != nil {
					b.Fatal(err)
				}
			}
			ctx := context.Background()
			b.ReportAllocs()
			for b.Loop() {
				if p, err := a.pausedLive(ctx, "/hook"); p || err != nil {
					b.Fatal(p, err)
				}
			}
		})
	}
}

// On file_system the record is parsed once per version of its file: a
// write by another gateway on the same directory (a new version, even of
// the same size within the same second) is read afresh at once.
func TestPauseParsedPerVersion(t *testing.T) {
	dir := t.TempDir()
	ctx := context.Background()
	q1 := newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop())
	q2 := newQueue(&certmagic.FileStorage{Path: dir}, zap.NewNop())
	at := time.Unix(1744831201, 0)
	if _, err := q1.pause(ctx, "/a", at, "x"); err != nil {
		t.Fatal(err)
	}
	for range 2 { // parsed, then from the kept parse
		if s, err := q2.loadPause(ctx); err != nil || !slices.Equal(s.paths(), []string{"/a"}) {
			t.Fatalf("%+v %v", s, err)
		}
	}
	if q2.pauseParsed.Load() == nil {
		t.Fatal("the parsed record was not kept")
	}
	// The same size: /a resumed, /b paused by the other gateway.
	if _, err := q1.resume(ctx, pauseAll); err != nil {
		t.Fatal(err)
	}
	if _, err := q1.pause(ctx, "/b", at, "x"); err != nil {
		t.Fatal(err)
	}
	if s, err := q2.loadPause(ctx); err != nil || !slices.Equal(s.paths(), []string{"/b"}) {
		t.Fatalf("after the other gateway's write: %+v %v, want /b", s, err)
	}
	data, _ := json.Marshal(PauseState{Paused: []Pause{{Path: "/c", Since: at, By: "x"}}})
	if err := q1.storage.Store(ctx, pauseKey, data); err != nil {
		t.Fatal(err)
	}
	if s, err := q2.loadPause(ctx); err != nil || !slices.Equal(s.paths(), []string{"/c"}) {
		t.Fatalf("after a store of the same size: %+v %v, want /c", s, err)
	}
	if _, err := q1.resume(ctx, pauseAll); err != nil {
		t.Fatal(err)
	}
	if s, err := q2.loadPause(ctx); err != nil || len(s.Paused) != 0 {
		t.Fatalf("after the resume: %+v %v, want nothing paused", s, err)
	}
}

// A config without queue has no worker to read the pause state: its start
// drops the paused series a previous config's worker left.
func TestPausedGaugeWithoutQueue(t *testing.T) {
	m, err := registerMetrics(prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	m.setPaused([]string{"/hook"})
	a := testApp(t)
	a.metrics = m
	withLiveApp(t, liveApp.Load()) // restored after Start makes a the live app
	if err := a.Start(); err != nil {
		t.Fatal(err)
	}
	defer a.Stop()
	if n := collectAndCount(m.paused); n != 0 {
		t.Fatalf("caddy_reready_paused has %d series in a config without queue", n)
	}
}

// The live path reads the pause record at most once per pauseFresh, not
// once per delivery, and sees this gateway's own pause at once.
func TestPauseReadOncePerFresh(t *testing.T) {
	rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 100})
	st := &countingPauseStorage{Storage: &certmagic.FileStorage{Path: t.TempDir()}}
	rig.h.app.queue = newQueue(st, zap.NewNop())
	forwarded := 0
	next := func(w http.ResponseWriter, r *http.Request) error { forwarded++; return nil }
	start := time.Now()
	const n = 50
	for i := range n {
		if resp := rig.serveAt("/hook", eventBody(fmt.Sprint("ret-", i), verify.StateComplete), next); resp.Code != 200 {
			t.Fatalf("delivery %d: %d", i, resp.Code)
		}
	}
	// A slow machine may take longer than pauseFresh for the loop: one
	// read per pauseFresh that passed, and one to start.
	if reads, most := st.reads.Load(), int64(time.Since(start)/pauseFresh)+1; reads > most || reads == 0 {
		t.Fatalf("%d reads of the pause record for %d deliveries in %s; want 1 to %d", reads, n, time.Since(start), most)
	}
	mustPause(t, rig.h.app.queue, "/hook")
	if resp := rig.serveAt("/hook", eventBody("ret-x", verify.StateComplete), next); resp.Code != 202 || forwarded != n {
		t.Fatalf("after this gateway's pause: %d, forwarded %d; want 202", resp.Code, forwarded)
	}
}

// countingPauseStorage counts loads of the pause record; it is not a
// *certmagic.FileStorage, so no directory probe answers first.
type countingPauseStorage struct {
	certmagic.Storage
	reads atomic.Int64
}

func (s *countingPauseStorage) Load(ctx context.Context, key string) ([]byte, error) {
	if key == pauseKey {
		s.reads.Add(1)
	}
	return s.Storage.Load(ctx, key)
}
