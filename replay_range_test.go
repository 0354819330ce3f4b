package rereadyverify

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/certmagic"
	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// replayDo posts a replay request through the admin API's route.
func replayDo(t *testing.T, body string) (int, string) {
	t.Helper()
	rec := httptest.NewRecorder()
	err := AdminAPI{}.Routes()[0].Handler.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/reready/replay", strings.NewReader(body)))
	if err != nil {
		ae, ok := err.(caddy.APIError)
		if !ok {
			t.Fatalf("replay: %T %v", err, err)
		}
		return ae.HTTPStatus, ae.Err.Error()
	}
	return rec.Code, rec.Body.String()
}

// withHistory turns history on in the rig's app, in its queue's storage.
func (rig *redeliveryRig) withHistory(t *testing.T, bodies bool) {
	t.Helper()
	a := rig.h.app
	withNodeName(t, "node-r")
	a.History = &HistoryConfig{Bodies: bodies}
	writes := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "history_writes_total"}, []string{"result"})
	a.history = newHistory(a.History, a.queue.storage, zap.NewNop(), a.journal.epoch, writes)
	a.history.now = func() time.Time { return rig.now }
	saved := processJournal
	processJournal = a.journal
	t.Cleanup(func() { processJournal = saved })
	withLiveApp(t, a)
}

// After the app took deliveries and mishandled them, an operator replays
// a range: the deliveries whose bodies are kept go through the queue
// again, in their original order per return, with the same delivery id
// and X-ReReady-Replay, past replay suppression; a dry run only counts;
// filters select; a delivery already pending is skipped, not doubled.
func TestReplayRange(t *testing.T) {
	rig := newRedeliveryRig(t)
	rig.withHistory(t, true)
	a := rig.h.app
	type sent struct {
		ret, state string
		id         string
		body       []byte
	}
	var all []sent
	for i, s := range []struct{ ret, state string }{
		{"ret-A", verify.StatePendingReturnShipment},
		{"ret-B", verify.StateComplete},
		{"ret-A", verify.StatePendingReturnShipmentDelivery},
		{"ret-A", verify.StateComplete},
	} {
		rig.now = rig.now.Add(time.Second)
		body := eventBody(s.ret, s.state)
		resp, err := rig.serve(body, rig.now.Unix(), rig.app.next) // the app says 200 (and mishandles it)
		if err != nil || resp.Code != http.StatusOK {
			t.Fatalf("delivery %d: %d %v", i, resp.Code, err)
		}
		reqs := rig.app.requests()
		all = append(all, sent{s.ret, s.state, reqs[len(reqs)-1].header.Get(hdrDeliveryID), body})
	}
	a.history.flush(context.Background())
	if n := len(rig.app.requests()); n != 4 {
		t.Fatalf("the app got %d live deliveries, want 4", n)
	}

	// Filters select; a dry run counts and queues nothing.
	code, out := replayDo(t, `{"since": "1h", "state": "complete", "dry_run": true}`)
	var res ReplayResult
	if code != 200 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("dry run: %d %s", code, out)
	}
	if res.Count != 2 || !slices.Equal(res.IDs, []string{all[1].id, all[3].id}) || res.ReplayID != "" {
		t.Fatalf("dry run of state complete: %+v, want %s and %s in order", res, all[1].id, all[3].id)
	}
	if items := rig.items(t); len(items) != 0 {
		t.Fatalf("a dry run queued %d items", len(items))
	}

	// The whole range of return A, for real.
	code, out = replayDo(t, fmt.Sprintf(`{"since": %q, "return_id": "ret-A"}`, rig.now.Add(-time.Hour).Format(time.RFC3339)))
	res = ReplayResult{}
	if code != 200 || json.Unmarshal([]byte(out), &res) != nil {
		t.Fatalf("replay: %d %s", code, out)
	}
	wantIDs := []string{all[0].id, all[2].id, all[3].id}
	if res.Count != 3 || !slices.Equal(res.IDs, wantIDs) || len(res.ReplayID) != 16 || len(res.Skipped) != 0 {
		t.Fatalf("replay: %+v, want %v", res, wantIDs)
	}
	view, _ := a.queueView(context.Background())
	if len(view) != 3 || view[0].ReplayID == nil || *view[0].ReplayID != res.ReplayID {
		t.Fatalf("queue view %+v, want 3 items of replay %s", view, res.ReplayID)
	}
	// Asked again while they wait: skipped, not doubled.
	code, out = replayDo(t, fmt.Sprintf(`{"ids": [%q]}`, all[0].id))
	var again ReplayResult
	if code != 200 || json.Unmarshal([]byte(out), &again) != nil || again.Count != 0 || len(again.Skipped) != 1 ||
		!strings.Contains(again.Skipped[0].Why, "in the queue already") {
		t.Fatalf("replay of a pending one: %d %s", code, out)
	}

	for range 4 {
		rig.step(t)
	}
	got := rig.app.requests()[4:]
	if len(got) != 3 {
		t.Fatalf("the app got %d replayed deliveries, want 3", len(got))
	}
	for i, g := range got {
		w := all[[]int{0, 2, 3}[i]]
		if g.body != string(w.body) || g.header.Get(hdrDeliveryID) != w.id || g.header.Get(hdrReplay) != res.ReplayID ||
			g.header.Get(hdrState) != w.state || g.header.Get(hdrVerified) != "hmac" {
			t.Fatalf("replayed %d: %q %v; want %s (%s) with X-ReReady-Replay %s", i, g.body, g.header, w.id, w.state, res.ReplayID)
		}
		if g.header.Get(hdrSignature) != "" {
			t.Errorf("replayed %d carries a signature header; none is kept", i)
		}
	}
	if items := rig.items(t); len(items) != 0 {
		t.Fatalf("%d items left after the replay went through", len(items))
	}
	j := a.journal.query(DeliveryFilter{ReturnID: "ret-A", Outcome: OutcomeQueued})
	if len(j) != 3 || j[0].Reason != string(ReasonReplayRequested) || j[0].Status != 202 {
		t.Fatalf("journal of the replay: %+v", j)
	}
	if s := a.journal.summary(rig.now); s.Queued != 0 {
		t.Errorf("summary counts %d queued on arrival; a replay is not an arrival", s.Queued)
	}
}

// Without kept bodies a replay is 409 saying why; bad requests are 400
// naming the bad value; a delivery whose body is not kept is skipped.
func TestReplayRefusals(t *testing.T) {
	rig := newRedeliveryRig(t)
	rig.withHistory(t, false)
	if code, out := replayDo(t, `{"since": "1h"}`); code != http.StatusConflict || !strings.Contains(out, "history { bodies }") {
		t.Fatalf("without bodies: %d %s", code, out)
	}
	rig.withHistory(t, true)
	for _, c := range []struct{ body, want string }{
		{`{}`, "nothing selected"},
		{`{"since": "yesterday"}`, `invalid since "yesterday"`},
		{`{"ids": ["nope"]}`, `invalid delivery id "nope"`},
		{`{"outcome": "lost"}`, `invalid outcome "lost"`},
		{`{"sinse": "1h"}`, `unknown field "sinse"`},
	} {
		if code, out := replayDo(t, c.body); code != http.StatusBadRequest || !strings.Contains(out, c.want) {
			t.Errorf("%s: %d %s, want 400 with %q", c.body, code, out, c.want)
		}
	}
	id := randomDeliveryID(rig.now.Unix()).String()
	code, out := replayDo(t, fmt.Sprintf(`{"ids": [%q]}`, id))
	if code != 200 || !strings.Contains(out, `"count":0`) || !strings.Contains(out, "body is not kept") {
		t.Fatalf("unknown body: %d %s", code, out)
	}

	// Without queue on, a replay has nowhere to go.
	b := newRedeliveryRig(t)
	b.withHistory(t, true)
	b.h.app.queueOn = false
	if code, out := replayDo(t, `{"since": "1h"}`); code != http.StatusConflict || !strings.Contains(out, "queue") {
		t.Fatalf("without queue: %d %s", code, out)
	}
	_ = certmagic.FileStorage{}
}

// caddy reready replay asks for a dry run, shows the count, replays only
// once confirmed, and says what it did; --dry-run and a refusal too.
func TestCommandReplay(t *testing.T) {
	rig := newRedeliveryRig(t)
	rig.withHistory(t, true)
	a := rig.h.app
	for _, st := range []string{verify.StatePendingReturnShipment, verify.StateComplete} {
		rig.now = rig.now.Add(time.Second)
		if resp, err := rig.serve(eventBody("ret-C", st), rig.now.Unix(), rig.app.next); err != nil || resp.Code != 200 {
			t.Fatalf("live: %d %v", resp.Code, err)
		}
	}
	a.history.flush(context.Background())
	addr, _, _ := fakeAdmin(t, a)
	o := replayOptions{adminOptions: adminOptions{Address: addr}, Request: ReplayRequest{Since: "1h", ReturnID: "ret-C"}}

	run := func(o replayOptions, stdin string) (string, string, error) {
		var out, errOut strings.Builder
		err := runReplay(o, strings.NewReader(stdin), &out, &errOut)
		return out.String(), errOut.String(), err
	}
	dry := o
	dry.DryRun = true
	out, _, err := run(dry, "")
	if err != nil || !strings.Contains(out, "2 deliveries selected") {
		t.Fatalf("--dry-run: %v\n%s", err, out)
	}
	_, errOut, err := run(o, "n\n")
	if err == nil || !strings.Contains(errOut, "Replay 2 deliveries?") || len(rig.items(t)) != 0 {
		t.Fatalf("declined: %v, asked %q, %d queued", err, errOut, len(rig.items(t)))
	}
	out, _, err = run(o, "y\n")
	if err != nil || !strings.Contains(out, "replayed 2 deliveries (replay ") || len(rig.items(t)) != 2 {
		t.Fatalf("confirmed: %v\n%s; %d queued", err, out, len(rig.items(t)))
	}
	yes := o
	yes.Yes = true
	out, errOut, err = run(yes, "")
	if err != nil || !strings.Contains(out, "0 deliveries selected") && !strings.Contains(out, "skipped 2") {
		t.Fatalf("again, while queued: %v\n%s%s", err, out, errOut)
	}

	a.queueOn = false
	if _, _, err := run(yes, ""); err == nil || !strings.Contains(err.Error(), "needs `queue`") || !strings.Contains(err.Error(), "409") {
		t.Fatalf("refused: %v", err)
	}
}
