package rereadyverify

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/caddyserver/certmagic"
	"go.uber.org/zap"
)

// newQueueRig is a replayRig whose handler has the queue on, in a
// temporary file_system storage.
func newQueueRig(t *testing.T, q QueueConfig) *replayRig {
	t.Helper()
	rig := &replayRig{now: time.Unix(1744831201, 0)}
	rig.h = &Handler{Secrets: []string{testSecret}, Tolerance: caddy.Duration(5 * time.Minute), Queue: &q}
	rig.h.app = testApp(t)
	if err := provision(t, rig.h); err != nil {
		t.Fatal(err)
	}
	rig.h.now = func() time.Time { return rig.now }
	return rig
}

func eventBody(returnID, state string) []byte {
	return []byte(fmt.Sprintf(`{"device_return_id":%q,"serial_number":null,"state":%q,"test":false,"ticket_url":null,"url":null}`, returnID, state))
}

// items returns the rig's queued items, oldest first.
func (rig *replayRig) items(t *testing.T) []*queueItem {
	t.Helper()
	items, err := rig.h.app.queue.all(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return items
}

func TestQueueTakesOverFailures(t *testing.T) {
	tests := []struct {
		name       string
		next       caddyhttp.HandlerFunc
		queued     bool
		upstream   int
		lastError  string
		retryAfter time.Duration // 0: the 1s backoff step
		status     int           // the item's last_status: what the gateway answered; 0: upstream
	}{
		{"upstream down (502 error)", func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusBadGateway, errors.New("dial tcp: connection refused"))
		}, true, 0, "HTTP 502: dial tcp: connection refused", 0, 502},
		{"timeout (504 error)", func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusGatewayTimeout, errors.New("timeout awaiting response headers"))
		}, true, 0, "HTTP 504", 0, 504},
		{"app answers 503 with Retry-After", func(w http.ResponseWriter, r *http.Request) error {
			w.Header().Set("Retry-After", "120")
			w.Header().Set("X-App-Secret-Detail", "internal")
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "app failure body")
			return nil
		}, true, 503, "the app answered 503", 2 * time.Minute, 0},
		{"app answers 429 via ReadFrom", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(http.StatusTooManyRequests)
			_, err := w.(io.ReaderFrom).ReadFrom(strings.NewReader("slow down"))
			return err
		}, true, 429, "the app answered 429", 0, 0},
		{"app answers 408", func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(http.StatusRequestTimeout)
			return nil
		}, true, 408, "the app answered 408", 0, 0},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
			body := eventBody(fmt.Sprint("ret-", i), verify.StatePendingReturnShipment)
			resp, err := rig.serve(body, rig.now.Unix(), tc.next)
			if err != nil {
				t.Fatalf("handler error %v; want the failure taken over", err)
			}
			if resp.Code != http.StatusAccepted || resp.Body.String() != "queued for redelivery\n" {
				t.Fatalf("answer %d %q, want 202", resp.Code, resp.Body)
			}
			if resp.Header().Get("X-App-Secret-Detail") != "" || resp.Header().Get("Retry-After") != "" {
				t.Fatalf("the app's failure headers reached the sender: %v", resp.Header())
			}
			items := rig.items(t)
			if len(items) != 1 {
				t.Fatalf("%d items stored, want 1", len(items))
			}
			it := items[0]
			if resp.Header().Get("X-Reready-Delivery-Id") != it.ID || string(it.Body) != string(body) {
				t.Fatalf("stored %s %q; answered id %q", it.ID, it.Body, resp.Header().Get("X-Reready-Delivery-Id"))
			}
			status := cmp.Or(tc.status, tc.upstream)
			if it.Attempts != 1 || it.LastStatus != status || it.LastUpstream != tc.upstream || !strings.HasPrefix(it.LastError, tc.lastError) {
				t.Fatalf("item attempts %d, last %d (app %d) %q; want 1, %d (app %d) %q",
					it.Attempts, it.LastStatus, it.LastUpstream, it.LastError, status, tc.upstream, tc.lastError)
			}
			// The API shows the same status as the error it goes with.
			if v := it.view(); v.LastStatus == nil || *v.LastStatus != status || v.HeldBehind != nil {
				t.Fatalf("view: last_status %v, held_behind %v; want %d, null", v.LastStatus, v.HeldBehind, status)
			}
			wait := it.NextAttemptAt.Sub(rig.now)
			if tc.retryAfter != 0 && wait != tc.retryAfter || tc.retryAfter == 0 && (wait < 800*time.Millisecond || wait > 1200*time.Millisecond) {
				t.Fatalf("next attempt in %v", wait)
			}
			for k := range it.Header {
				if isReReadyHeader(k) && k != hdrSignature {
					t.Fatalf("stored header %s: the redelivery sets X-ReReady-* afresh", k)
				}
			}
			// A queued delivery counts as delivered.
			calls := 0
			resp, _ = rig.serve(body, rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { calls++; return nil })
			if calls != 0 || resp.Code != 200 || resp.Body.String() != "already delivered\n" {
				t.Fatalf("repeat of a queued delivery: forwarded %d times, answered %d %q", calls, resp.Code, resp.Body)
			}
			got := rig.h.app.journal.query(DeliveryFilter{Outcome: OutcomeQueued})
			if len(got) != 1 || got[0].Reason != string(ReasonUpstreamFailed) || got[0].Status != 202 ||
				got[0].UpstreamStatus != tc.upstream || got[0].DeliveryID != it.ID || got[0].Attempt != 1 {
				t.Fatalf("journal: %+v", got)
			}
		})
	}
}

func TestQueuePassesOtherAnswers(t *testing.T) {
	for _, code := range []int{200, 201, 400, 404, 409} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
			resp, err := rig.serve(eventBody("ret", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error {
				w.Header().Set("X-App", "yes")
				w.WriteHeader(code)
				io.WriteString(w, "app says")
				return nil
			})
			if err != nil || resp.Code != code || resp.Body.String() != "app says" || resp.Header().Get("X-App") != "yes" {
				t.Fatalf("answer %d %q %v (err %v); want the app's %d", resp.Code, resp.Body, resp.Header(), err, code)
			}
			if items := rig.items(t); len(items) != 0 {
				t.Fatalf("%d items queued for a %d answer", len(items), code)
			}
			got := rig.h.app.journal.query(DeliveryFilter{})
			if len(got) != 1 || got[0].Outcome != OutcomeForwarded || got[0].Status != code || got[0].UpstreamStatus != code {
				t.Fatalf("journal: %+v", got)
			}
		})
	}
}

func TestQueueHoldsLaterDeliveriesOfAReturn(t *testing.T) {
	rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
	down := func(w http.ResponseWriter, r *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("down"))
	}
	calls := 0
	up := func(w http.ResponseWriter, r *http.Request) error { calls++; return nil }
	if resp, _ := rig.serve(eventBody("A", verify.StatePendingReturnShipmentDelivery), rig.now.Unix(), down); resp.Code != 202 {
		t.Fatalf("first: %d", resp.Code)
	}
	// The app is back, but A has a queued delivery: A's next one waits
	// behind it; B is not held up.
	resp, _ := rig.serve(eventBody("A", verify.StateComplete), rig.now.Unix(), up)
	if resp.Code != 202 || calls != 0 {
		t.Fatalf("A's second delivery: %d, forwarded %d times; want 202 held", resp.Code, calls)
	}
	resp, _ = rig.serve(eventBody("B", verify.StateComplete), rig.now.Unix(), up)
	if resp.Code != 200 || calls != 1 {
		t.Fatalf("B: %d, forwarded %d times; want 200 live", resp.Code, calls)
	}
	items := rig.items(t)
	if len(items) != 2 {
		t.Fatalf("%d items, want 2", len(items))
	}
	line := lineOf(t, rig.h.app.queue, "A")
	held, _ := rig.h.app.queue.loadItem(context.Background(), line[1])
	if len(line) != 2 || held.State != verify.StateComplete || held.Attempts != 0 {
		t.Fatalf("line %v, second %+v", line, held)
	}
	got := rig.h.app.journal.query(DeliveryFilter{ReturnID: "A", Outcome: OutcomeQueued})
	if len(got) != 2 || got[0].Reason != string(ReasonHeld) || got[0].Attempt != 0 {
		t.Fatalf("journal: %+v", got)
	}

	// The views say what is true: the tried one has its status and next
	// attempt; the ones behind it (all arrived in the same second, so
	// the stored line decides) say which delivery they wait for, and
	// have no attempt and no status yet.
	if resp, _ := rig.serve(eventBody("A", verify.StateFailed), rig.now.Unix(), up); resp.Code != 202 || calls != 1 {
		t.Fatalf("A's third delivery: %d", resp.Code)
	}
	line = lineOf(t, rig.h.app.queue, "A")
	view, err := rig.h.app.queue.view(context.Background())
	if err != nil || len(view) != 3 || len(line) != 3 {
		t.Fatalf("view %+v, %v; line %v", view, err, line)
	}
	byID := map[string]QueueItem{}
	for _, v := range view {
		byID[v.ID] = v
	}
	head := byID[line[0]]
	if head.HeldBehind != nil || head.NextAttemptAt == nil || head.LastStatus == nil || *head.LastStatus != 502 || head.Attempts != 1 {
		t.Fatalf("the tried one: %+v", head)
	}
	for _, id := range line[1:] {
		v := byID[id]
		if v.HeldBehind == nil || *v.HeldBehind != line[0] || v.NextAttemptAt != nil || v.LastStatus != nil || v.Attempts != 0 {
			t.Fatalf("a held one: %+v; want held behind %s, no next attempt, no status", v, line[0])
		}
	}
	raw, _ := json.Marshal(byID[line[2]])
	if !strings.Contains(string(raw), `"held_behind":"`+line[0]+`"`) || !strings.Contains(string(raw), `"last_status":null`) ||
		!strings.Contains(string(raw), `"next_attempt_at":null`) {
		t.Fatalf("JSON %s", raw)
	}
	if held := rig.h.app.queue.heldBehind(context.Background(), mustLoad(t, rig.h.app.queue, line[1])); held != line[0] {
		t.Fatalf("heldBehind %q, want %s", held, line[0])
	}
	if held := rig.h.app.queue.heldBehind(context.Background(), mustLoad(t, rig.h.app.queue, line[0])); held != "" {
		t.Fatalf("the head is held behind %q", held)
	}
}

func mustLoad(t *testing.T, q *queue, id string) *queueItem {
	t.Helper()
	it, err := q.loadItem(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return it
}

func TestQueueFullAndStorageFailure(t *testing.T) {
	down := func(w http.ResponseWriter, r *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("down"))
	}
	rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 1})
	rig.serve(eventBody("A", verify.StateComplete), rig.now.Unix(), down)
	resp, err := rig.serve(eventBody("B", verify.StateComplete), rig.now.Unix(), down)
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != 503 || resp.Header().Get("Retry-After") == "" || !strings.Contains(err.Error(), "queue_full") {
		t.Fatalf("at max_items: %v, Retry-After %q", err, resp.Header().Get("Retry-After"))
	}
	if got := rig.h.app.journal.query(DeliveryFilter{Outcome: OutcomeRejected}); len(got) != 1 || got[0].Reason != string(ReasonQueueFull) {
		t.Fatalf("journal: %+v", got)
	}

	// Storage that fails: the sender gets the original failure, never 2xx.
	rig = newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
	fst := &failingStorage{FileStorage: &certmagic.FileStorage{Path: t.TempDir()}}
	fst.setBroken(true)
	rig.h.app.queue.storage = fst
	failure := caddyhttp.Error(http.StatusGatewayTimeout, errors.New("slow"))
	resp, err = rig.serve(eventBody("C", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { return failure })
	if err != failure || resp.Code == 202 {
		t.Fatalf("storage down: err %v, code %d; want the original 504", err, resp.Code)
	}
	resp, err = rig.serve(eventBody("D", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error {
		w.WriteHeader(500)
		io.WriteString(w, "app body")
		return nil
	})
	if !errors.As(err, &he) || he.StatusCode != 500 || resp.Body.String() != "" {
		t.Fatalf("storage down, app 500: err %v, body %q; want the 500 as an error, no app body", err, resp.Body)
	}
	// Nothing stored, so a retry is forwarded again.
	calls := 0
	rig.serve(eventBody("D", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { calls++; return nil })
	if calls != 1 {
		t.Fatalf("retry after a failed store forwarded %d times", calls)
	}
}

func TestQueueWriterFlushBeforeStatus(t *testing.T) {
	rec := httptest.NewRecorder()
	var q queueWriter
	q.reset(rec, nil)
	if err := http.NewResponseController(&q).Flush(); err != nil {
		t.Fatal(err)
	}
	if rec.Flushed {
		t.Fatal("a flush before the status reached the sender (it would commit a 200)")
	}
	q.Header().Set("X-A", "1")
	q.WriteHeader(http.StatusCreated)
	q.WriteHeader(http.StatusInternalServerError) // ignored
	if err := http.NewResponseController(&q).Flush(); err != nil || !rec.Flushed {
		t.Fatalf("flush after the status: %v, flushed %v", err, rec.Flushed)
	}
	if rec.Code != 201 || rec.Header().Get("X-A") != "1" {
		t.Fatalf("passed answer %d %v", rec.Code, rec.Header())
	}
}

func TestJournalRecordsEveryOutcome(t *testing.T) {
	rig := newReplayRig(t)
	rig.h.app = testApp(t)
	body := eventBody("ret-j", verify.StateComplete)
	ts := rig.now.Unix()
	rig.serve(body, ts, func(w http.ResponseWriter, r *http.Request) error { w.WriteHeader(204); return nil })
	rig.serve(body, ts, nil) // replayed
	rig.serve(body, ts-3600, nil)
	got := rig.h.app.journal.query(DeliveryFilter{})
	if len(got) != 3 {
		t.Fatalf("%d entries, want 3: %+v", len(got), got)
	}
	stale, replayed, fwd := got[0], got[1], got[2]
	if fwd.Outcome != OutcomeForwarded || fwd.Status != 204 || fwd.Verified != "hmac" || fwd.Key != 1 || fwd.Attempt != 1 ||
		fwd.DeviceReturnID != "ret-j" || fwd.State != verify.StateComplete || fwd.Path != "/hook" || fwd.DeliveryID == "" {
		t.Errorf("forwarded: %+v", fwd)
	}
	if replayed.Outcome != OutcomeReplayed || replayed.Status != 200 || replayed.DeliveryID != fwd.DeliveryID || replayed.Reason != "replay" {
		t.Errorf("replayed: %+v", replayed)
	}
	if stale.Outcome != OutcomeRejected || stale.Status != 401 || stale.Reason != string(ReasonTimestampStale) || stale.DeliveryID != "" || stale.Key != 0 {
		t.Errorf("rejected: %+v", stale)
	}
}

// Headers set before next ran (an earlier `header` directive, Caddy's
// Server) stay on both paths; a swallowed answer's own are taken out.
func TestQueueWriterHeaders(t *testing.T) {
	for _, code := range []int{200, 503} {
		rec := httptest.NewRecorder()
		for i := range 6 { // more than the four kept inline
			rec.Header().Set(fmt.Sprintf("X-Before-%d", i), "kept")
		}
		var q queueWriter
		q.reset(rec, nil)
		q.Header().Add("X-Before-0", "appended by the app")
		q.Header().Set("X-App", "app")
		q.Header().Set("Retry-After", "30")
		q.WriteHeader(code)
		io.WriteString(&q, "body")
		h := rec.Header()
		for i := range 6 {
			k := fmt.Sprintf("X-Before-%d", i)
			if code == 503 && fmt.Sprint(h[k]) != "[kept]" || code == 200 && h.Get(k) != "kept" {
				t.Errorf("%d: %s = %q", code, k, h[k])
			}
		}
		if code == 503 {
			if h.Get("X-App") != "" || h.Get("Retry-After") != "" || rec.Body.Len() != 0 || rec.Code != 200 || q.retryAfter != "30" {
				t.Errorf("503 reached the sender: %v %q (Retry-After seen: %q)", h, rec.Body, q.retryAfter)
			}
		} else if h.Get("X-App") != "app" || rec.Body.String() != "body" || rec.Code != 200 || len(h["X-Before-0"]) != 2 {
			t.Errorf("200 did not pass: %v %q", h, rec.Body)
		}
	}
}

// A handler error the queue does not take over (a 4xx from a later
// handler) is passed on; an answer the app gave is judged by its status
// even when reverse_proxy aborts while copying it.
func TestQueueEdgeAnswers(t *testing.T) {
	t.Run("4xx handler error passes", func(t *testing.T) {
		rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
		_, err := rig.serve(eventBody("r403", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error {
			return caddyhttp.Error(http.StatusForbidden, errors.New("not for you"))
		})
		var he caddyhttp.HandlerError
		if !errors.As(err, &he) || he.StatusCode != 403 {
			t.Fatalf("err = %v, want the 403 passed on", err)
		}
		if items := rig.items(t); len(items) != 0 {
			t.Fatalf("%d items queued for a 403", len(items))
		}
	})
	t.Run("2xx then the copy to the sender aborted", func(t *testing.T) {
		rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
		body := eventBody("rabort", verify.StateComplete)
		rig.serve(body, rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(200)
			panic(http.ErrAbortHandler)
		})
		calls := 0
		resp, _ := rig.serve(body, rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { calls++; return nil })
		if calls != 0 || resp.Body.String() != "already delivered\n" {
			t.Fatalf("the app took it, yet a resend was forwarded %d times (%q)", calls, resp.Body)
		}
		if got := rig.h.app.journal.query(DeliveryFilter{Outcome: OutcomeForwarded}); len(got) != 1 || got[0].UpstreamStatus != 200 {
			t.Fatalf("journal: %+v", got)
		}
	})
	t.Run("5xx whose body broke off is queued", func(t *testing.T) {
		rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
		resp, err := rig.serve(eventBody("rbroken", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error {
			w.WriteHeader(502)
			io.WriteString(w, "partial")
			panic(http.ErrAbortHandler)
		})
		if err != nil || resp.Code != 202 || len(rig.items(t)) != 1 {
			t.Fatalf("answer %d %q, err %v, %d items; want 202 and the delivery stored", resp.Code, resp.Body, err, len(rig.items(t)))
		}
	})
}

// When the storage cannot say whether the return has queued deliveries,
// the delivery is refused with 503 and not forwarded: forwarding could
// overtake a queued one.
func TestQueueHeldCheckFails(t *testing.T) {
	rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
	st := newFaultyStorage(t)
	rig.h.app.queue = newQueue(st, zap.NewNop())
	st.statFails.Store(1000)
	calls := 0
	resp, err := rig.serve(eventBody("held-check-fails", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { calls++; return nil })
	var he caddyhttp.HandlerError
	if !errors.As(err, &he) || he.StatusCode != 503 || calls != 0 || resp.Header().Get("Retry-After") == "" || !strings.Contains(err.Error(), "queue_unavailable") {
		t.Fatalf("held check failing: %v, forwarded %d times, Retry-After %q; want 503 queue_unavailable, not forwarded", err, calls, resp.Header().Get("Retry-After"))
	}
	got := rig.h.app.journal.query(DeliveryFilter{ReturnID: "held-check-fails"})
	if len(got) != 1 || got[0].Outcome != OutcomeRejected || got[0].Reason != string(ReasonQueueUnavailable) || got[0].Status != 503 {
		t.Fatalf("journal: %+v", got)
	}
	// Refused, not remembered: the sender's retry goes through.
	st.statFails.Store(0)
	if resp, _ := rig.serve(eventBody("held-check-fails", verify.StateComplete), rig.now.Unix(), func(w http.ResponseWriter, r *http.Request) error { calls++; return nil }); resp.Code != 200 || calls != 1 {
		t.Fatalf("retry: %d, forwarded %d times", resp.Code, calls)
	}
}

// A dead delivery is not delivered: its resend is forwarded (and its dead
// item removed once the app takes it), or queued again if the app fails.
func TestQueueResendOfADeadDelivery(t *testing.T) {
	rig := newQueueRig(t, QueueConfig{MaxAge: caddy.Duration(time.Hour), MaxItems: 10})
	ctx := context.Background()
	down := func(w http.ResponseWriter, r *http.Request) error {
		return caddyhttp.Error(http.StatusBadGateway, errors.New("down"))
	}
	calls := 0
	up := func(w http.ResponseWriter, r *http.Request) error { calls++; return nil }
	kill := func(id string) {
		t.Helper()
		it, err := rig.h.app.queue.loadItem(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		it.Status, it.NextAttemptAt = ItemDead, nil
		if err := rig.h.app.queue.storeItem(ctx, it); err != nil {
			t.Fatal(err)
		}
		if err := rig.h.app.queue.leaveLine(ctx, it.DeviceReturnID, id); err != nil {
			t.Fatal(err)
		}
	}
	for _, c := range []struct {
		name   string
		resend caddyhttp.HandlerFunc
		code   int
		status string // the item after the resend; "" gone
	}{
		{"delivered", up, 200, ""},
		{"failing again", down, 202, ItemPending},
	} {
		t.Run(c.name, func(t *testing.T) {
			body := eventBody("dead-resend-"+c.name, verify.StateComplete)
			if resp, _ := rig.serve(body, rig.now.Unix(), down); resp.Code != 202 {
				t.Fatalf("first: %d", resp.Code)
			}
			items := rig.items(t)
			id := items[len(items)-1].ID
			kill(id)
			// A repeat of a pending delivery is acknowledged; of a dead one, not.
			resp, err := rig.serve(body, rig.now.Unix(), c.resend)
			if resp.Code != c.code {
				t.Fatalf("resend of the dead delivery: %d, %v; want %d", resp.Code, err, c.code)
			}
			it, err := rig.h.app.queue.loadItem(ctx, id)
			switch {
			case c.status == "" && !errors.Is(err, errItemNotFound):
				t.Fatalf("the dead item is still stored after its resend was delivered: %+v, %v", it, err)
			case c.status != "" && (err != nil || it.Status != c.status || it.Attempts != 2):
				t.Fatalf("item after the resend: %+v, %v; want %s, attempt 2", it, err, c.status)
			}
			got := rig.h.app.journal.query(DeliveryFilter{ReturnID: "dead-resend-" + c.name, Limit: 1})
			if len(got) != 1 || got[0].Reason != string(ReasonResentDead) || got[0].Status != c.code {
				t.Fatalf("journal: %+v; want reason resent_dead, status %d", got, c.code)
			}
		})
	}
	if calls != 1 {
		t.Fatalf("the app got %d resends, want 1", calls)
	}
}
