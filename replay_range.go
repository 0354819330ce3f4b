package rereadyverify

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"go.uber.org/zap"
)

// This file is range replay (POST /reready/replay): after an app bug, an
// operator sends a chosen set of past deliveries again. It selects them
// from the history (history.go) by id or by range and filter, and puts
// each whose body is kept back on the queue, in its original order per
// return: from there the worker sends them through the same route, with
// the same backoff and per-return order as any queued delivery, carrying
// the same X-ReReady-Delivery-Id and X-ReReady-Replay: <replay id>, so an
// app that drops known delivery ids can tell a deliberate replay apart.
// Replay suppression does not stop them: a redelivery does not pass the
// replay gate.

// maxReplay bounds the deliveries one replay selects.
const maxReplay = 10_000

// ReplayRequest is POST /reready/replay's body: ids, or a range with
// filters (what GET /reready/deliveries takes), or both.
type ReplayRequest struct {
	IDs      []string `json:"ids,omitempty"`
	Since    string   `json:"since,omitempty"` // RFC 3339, or a duration back from now (2h)
	Until    string   `json:"until,omitempty"`
	ReturnID string   `json:"return_id,omitempty"`
	State    string   `json:"state,omitempty"`
	Outcome  string   `json:"outcome,omitempty"`
	DryRun   bool     `json:"dry_run,omitempty"`
}

// ReplayResult is what a replay selected and queued.
type ReplayResult struct {
	Count    int          `json:"count"`               // queued again (with dry_run: would be)
	IDs      []string     `json:"ids"`                 // those deliveries, in the order they go
	ReplayID string       `json:"replay_id,omitempty"` // X-ReReady-Replay of their redeliveries; none with dry_run
	Skipped  []ReplaySkip `json:"skipped,omitempty"`   // selected, but not queued
	// History objects listed but not readable while selecting (swept
	// meanwhile, or on Redis not written yet): deliveries in them may be
	// missing from the selection.
	Unreadable int64 `json:"unreadable,omitempty"`
}

// ReplaySkip is a selected delivery that was not queued, and why.
type ReplaySkip struct {
	ID  string `json:"id"`
	Why string `json:"why"`
}

// serveReplay answers POST /reready/replay.
func serveReplay(w http.ResponseWriter, r *http.Request) *opsError {
	a := liveApp.Load()
	var req ReplayRequest
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		return opsErrorf(http.StatusBadRequest, "invalid replay request: %v (want JSON: ids, or since, until, return_id, state, outcome; dry_run)", err)
	}
	switch {
	case a == nil || a.history == nil || !a.history.bodies:
		return opsErrorf(http.StatusConflict, "replay needs the bodies: turn on `history { bodies }` in the reready global option; only deliveries that arrive after that can be replayed")
	case !a.queueOn:
		return opsErrorf(http.StatusConflict, "replay needs `queue` on a reready_verify handler: replayed deliveries go through the queue")
	}
	ctx, unread := withUnreadCount(r.Context())
	res, oerr := a.replay(ctx, req, r.RemoteAddr)
	if oerr != nil {
		return oerr
	}
	res.Unreadable = unread.Load()
	return writeJSON(w, res)
}

// replay selects, and unless req.DryRun queues, the deliveries req names.
func (a *App) replay(ctx context.Context, req ReplayRequest, by string) (ReplayResult, *opsError) {
	ids, oerr := a.replaySelect(ctx, req)
	if oerr != nil {
		return ReplayResult{}, oerr
	}
	res := ReplayResult{IDs: []string{}}
	kept, err := findBodies(ctx, a.history.storage, ids)
	if err != nil {
		return ReplayResult{}, opsErrorf(http.StatusServiceUnavailable, "reading the kept bodies: %v", err)
	}
	var bodies []*historyBody
	for _, id := range ids {
		if b, ok := kept[id]; ok {
			bodies = append(bodies, b)
		} else {
			res.Skipped = append(res.Skipped, ReplaySkip{id.String(), "its body is not kept (it arrived before history bodies was on, or is past keep)"})
		}
	}
	// The original order: by when each was kept (as it arrived), then id.
	slices.SortStableFunc(bodies, func(x, y *historyBody) int {
		if c := x.At.Compare(y.At); c != 0 {
			return c
		}
		return strings.Compare(x.DeliveryID, y.DeliveryID)
	})
	if req.DryRun {
		for _, b := range bodies {
			res.IDs = append(res.IDs, b.DeliveryID)
		}
		res.Count = len(res.IDs)
		return res, nil
	}

	var rid [8]byte
	_, _ = rand.Read(rid[:])
	res.ReplayID = hex.EncodeToString(rid[:])
	now := a.now()
	store := context.WithoutCancel(ctx) // an operator who hangs up still gets them all queued or none
	for i, b := range bodies {
		it, err := a.replayItem(b, res.ReplayID, now.Add(time.Duration(i)*time.Microsecond))
		if err != nil {
			res.Skipped = append(res.Skipped, ReplaySkip{b.DeliveryID, err.Error()})
			continue
		}
		revive := func(old *queueItem) {
			old.ReplayID = res.ReplayID
			old.NextAttemptAt = &now
		}
		what, err := a.queue.enqueue(store, it, a.queueMaxItems, now, revive)
		switch {
		case errors.Is(err, errQueueFull):
			res.Skipped = append(res.Skipped, ReplaySkip{b.DeliveryID, fmt.Sprintf("the queue is full (max_items %d)", a.queueMaxItems)})
			continue
		case err != nil:
			a.logger.Error("replay: queueing a delivery failed", zap.String("id", b.DeliveryID), zap.Error(err))
			res.Skipped = append(res.Skipped, ReplaySkip{b.DeliveryID, "storing it in the queue failed: " + err.Error()})
			continue
		case what == enqueuedExisted:
			res.Skipped = append(res.Skipped, ReplaySkip{b.DeliveryID, "it is in the queue already (pending)"})
			continue
		}
		res.IDs = append(res.IDs, b.DeliveryID)
		a.recordItem(it, OutcomeQueued, ReasonReplayRequested, attemptResult{status: http.StatusAccepted})
	}
	res.Count = len(res.IDs)
	if res.Count > 0 {
		a.queued()
	}
	if a.replays != nil {
		a.replays.Add(float64(res.Count))
	}
	a.logger.Info("replay: deliveries queued again, as asked", zap.String("replay_id", res.ReplayID),
		zap.Int("count", res.Count), zap.Int("skipped", len(res.Skipped)), zap.String("by", by))
	if a.events != nil {
		a.events.Emit(a.ctx, "reready.replay", map[string]any{
			"replay_id": res.ReplayID, "count": res.Count, "skipped": len(res.Skipped), "by": by,
		})
	}
	return res, nil
}

// replaySelect turns a replay request into delivery ids: the ids it names
// and those of the range's entries that match its filters, each once.
func (a *App) replaySelect(ctx context.Context, req ReplayRequest) ([]deliveryID, *opsError) {
	var ids []deliveryID
	seen := map[deliveryID]bool{}
	add := func(id deliveryID) *opsError {
		if seen[id] {
			return nil
		}
		if len(ids) == maxReplay {
			return opsErrorf(http.StatusBadRequest, "more than %d deliveries selected: narrow the range", maxReplay)
		}
		seen[id] = true
		ids = append(ids, id)
		return nil
	}
	for _, s := range req.IDs {
		id, ok := parseDeliveryID(s)
		if !ok {
			return nil, opsErrorf(http.StatusBadRequest, "invalid delivery id %q in ids", clip(s))
		}
		if oerr := add(id); oerr != nil {
			return nil, oerr
		}
	}
	ranged := req.Since != "" || req.Until != "" || req.ReturnID != "" || req.State != "" || req.Outcome != ""
	if !ranged {
		if len(ids) == 0 {
			return nil, opsErrorf(http.StatusBadRequest, "nothing selected: give ids, or a range (since, until) and filters (return_id, state, outcome)")
		}
		return ids, nil
	}
	if req.Outcome != "" && !slices.Contains(Outcomes, req.Outcome) {
		return nil, opsErrorf(http.StatusBadRequest, "invalid outcome %q: want one of %s", clip(req.Outcome), strings.Join(Outcomes, ", "))
	}
	now := a.now()
	q := rangeQuery{f: DeliveryFilter{ReturnID: req.ReturnID, State: req.State, Outcome: req.Outcome, Limit: maxDeliveryLimit}}
	for _, p := range []struct {
		name, v string
		t       *time.Time
	}{{"since", req.Since, &q.since}, {"until", req.Until, &q.until}} {
		if p.v == "" {
			continue
		}
		t, err := parseWhen(p.v, now)
		if err != nil {
			return nil, opsErrorf(http.StatusBadRequest, "invalid %s %q: want an RFC 3339 time (2026-01-02T15:04:05Z) or a duration back from now (2h, 30m, 7d)", p.name, clip(p.v))
		}
		*p.t = t
	}
	for {
		ds, next, err := queryRange(ctx, a, a.journal, q)
		if err != nil {
			return nil, opsErrorf(http.StatusServiceUnavailable, "reading the history: %v", err)
		}
		for _, d := range ds {
			if id, ok := parseDeliveryID(d.DeliveryID); ok {
				if oerr := add(id); oerr != nil {
					return nil, oerr
				}
			}
		}
		if next == nil {
			return ids, nil
		}
		q.cursor = next
	}
}

// replayItem is the queue item that sends b again: its route, body and
// trusted headers as kept. The request's other headers are not kept, and
// nor is the signature header: the app gets the body with
// Content-Type: application/json and the trusted X-ReReady-* headers.
func (a *App) replayItem(b *historyBody, replayID string, receivedAt time.Time) (*queueItem, error) {
	ev, err := verify.ParsePayload(b.Body)
	if err != nil {
		return nil, fmt.Errorf("its kept body does not parse: %v", err)
	}
	return &queueItem{
		ID:             b.DeliveryID,
		Status:         ItemPending,
		DeviceReturnID: ev.DeviceReturnID,
		State:          ev.State,
		Test:           ev.Test,
		ReceivedAt:     receivedAt.UTC(),
		NextAttemptAt:  &receivedAt,
		MaxAge:         int64(a.queueMaxAge),
		Server:         b.Server,
		Port:           b.Port,
		TLS:            b.TLS,
		Host:           b.Host,
		URI:            b.URI,
		Header:         http.Header{"Content-Type": {"application/json"}},
		Verified:       b.Headers[hdrVerified],
		Timestamp:      b.Headers[hdrTimestamp],
		Body:           b.Body,
		ReplayID:       replayID,
	}, nil
}

// replaysTotal is caddy_reready_replays_total, created once per process.
var replaysTotal = sync.OnceValue(func() prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{
		Namespace: "caddy", Subsystem: "reready", Name: "replays_total",
		Help: "Deliveries put back on the queue by an operator's replay (POST /reready/replay).",
	})
})

// registerReplayMetrics registers replaysTotal on reg and returns the
// counter reg exports.
func registerReplayMetrics(reg prometheus.Registerer) (prometheus.Counter, error) {
	return registerOn(reg, replaysTotal())
}
