package rereadyverify

import (
	"context"
	"slices"
	"time"

	"go.uber.org/zap"
)

// This file is the worker's choice of what to attempt in a scan (due: due,
// not paused, first in its return's line, one probe per failing route) and
// the attempts themselves, each under the item's storage lock, with what
// follows them: the item stored again, given up on, or removed.

// isDue reports whether a pending item may be attempted at now: its next
// attempt time has come, or its route answered a delivery since its last
// attempt.
func (w *worker) isDue(it *queueItem, now time.Time) bool {
	if it.Status != ItemPending {
		return false
	}
	if it.NextAttemptAt == nil || !it.NextAttemptAt.After(now) {
		return true
	}
	kicked, ok := w.kicks[it.path()]
	return ok && (it.LastAttemptAt == nil || kicked.After(*it.LastAttemptAt))
}

// candidate is an item to attempt now. probe: its route's app is failing,
// and it is the one delivery tried; expire: its route's app is failing
// and its max_age has passed, so it is given up on without an attempt.
type candidate struct {
	item   *queueItem
	probe  bool
	expire bool
	relist bool // the storage does not list it: store it again first
}

// due returns up to limit items to attempt now, the longest waiting
// first: due, not paused (the pause state is read once per call, that is
// per scan), not in flight here, and first in their return's line; of a
// route whose app is failing, only the oldest due, once its next probe is
// due and no probe of it is in flight. It reads the line of a return only
// when one of its items is a candidate.
func (w *worker) due(ctx context.Context, now time.Time, limit int) []candidate {
	pause, err := w.pausedForScan(ctx)
	if err != nil {
		return nil // cannot tell what is paused: nothing this scan
	}
	w.mu.Lock()
	var cands []*queueItem
	for _, c := range w.items {
		if _, paused := pause.covers(c.item.path()); paused {
			continue
		}
		if w.isDue(c.item, now) && !w.inFlight[c.item.ID] {
			cands = append(cands, c.item)
		}
	}
	w.mu.Unlock()
	waitingSince := func(it *queueItem) time.Time {
		if it.NextAttemptAt != nil {
			return *it.NextAttemptAt
		}
		return it.ReceivedAt
	}
	slices.SortFunc(cands, func(a, b *queueItem) int { return waitingSince(a).Compare(waitingSince(b)) })

	type line struct {
		head     string
		ids      []string
		unlisted bool // its head was looked for outside the listing
	}
	lines := map[string]*line{}
	probed := map[string]bool{} // routes given their probe in this scan
	var out []candidate
	for _, it := range cands {
		if len(out) >= limit {
			break
		}
		path := it.path()
		w.mu.Lock()
		r := w.routes[path]
		probe := r.probing()
		skip := probe && (r.probe != "" || now.Before(r.nextProbe))
		w.mu.Unlock()
		if probe && !now.Before(it.deadline()) {
			out = append(out, candidate{item: it, expire: true})
			continue
		}
		if skip || probed[path] {
			continue
		}
		l := lines[it.DeviceReturnID]
		if l == nil {
			rec, err := w.q.loadReturn(ctx, it.DeviceReturnID)
			if err != nil {
				w.logOnce("line "+it.DeviceReturnID, "queue: reading a return's line failed", zap.Error(err))
				continue
			}
			l = &line{head: w.head(ctx, rec), ids: rec.IDs}
			lines[it.DeviceReturnID] = l
		}
		// An item missing from its line is put back in it by the attempt
		// (firstInLine), which then decides.
		relist := false
		if it.ID != l.head && slices.Contains(l.ids, it.ID) {
			// Its head may be a pending item the storage no longer lists (a
			// networked storage's delete that failed half-way: index entry
			// gone, value kept): nothing else would ever try it, and its
			// whole return would wait.
			if l.unlisted || l.head == "" {
				continue
			}
			l.unlisted = true
			w.mu.Lock()
			_, listed := w.items[l.head]
			busy := w.inFlight[l.head]
			w.mu.Unlock()
			if listed || busy {
				continue
			}
			h, err := w.q.loadItem(ctx, l.head)
			w.mu.Lock()
			due := err == nil && w.isDue(h, now)
			w.mu.Unlock()
			if _, paused := pause.covers(h.path()); !due || paused {
				continue
			}
			it, relist = h, true
		}
		if probe {
			probed[path] = true
			w.mu.Lock()
			r.probe = it.ID
			w.mu.Unlock()
		}
		out = append(out, candidate{item: it, probe: probe, relist: relist})
	}
	return out
}

// head returns the first id of a line that is still a pending item,
// taking stale ids (delivered, dropped, dead or unreadable items) out of
// the line as it goes.
func (w *worker) head(ctx context.Context, rec returnRecord) string {
	head, stale, _ := w.q.firstPending(ctx, rec.IDs) // an unreadable head keeps the order
	for _, id := range stale {
		if err := w.q.leaveLine(ctx, rec.DeviceReturnID, id); err != nil {
			w.logOnce("line "+rec.DeviceReturnID, "queue: taking a stale delivery out of its return's line failed", zap.Error(err))
			return id
		}
	}
	return head
}

// lock takes the storage lock of item id for an attempt. While another
// holds it, it answers nil and notes since when; once the lock has been
// held for lockTakeoverAfter, it waits for it with the storage's Lock,
// which breaks a lock left behind by a crash or a failed write (see
// lockStorage), so such a lock holds a return up for about 15 s at most.
func (w *worker) lock(id string) (unlock func(context.Context, *zap.Logger), busy *busyLock) {
	key := itemKey(id)
	unlock, ok, err := tryLockStorage(w.ctx, w.q.storage, key)
	if err != nil {
		w.logOnce("lock "+id, "queue: taking the storage lock of a queued delivery failed", zap.String("id", id), zap.Error(err))
	}
	now := w.now()
	w.mu.Lock()
	b := w.busy[id]
	if !ok && b == nil {
		b = &busyLock{since: now}
		if c := w.items[id]; c != nil {
			b.seen = versionOf(c.item)
		}
		w.busy[id] = b
	}
	w.mu.Unlock()
	if ok {
		return unlock, b
	}
	if now.Sub(b.since) < lockTakeoverAfter {
		return nil, nil
	}
	ctx, cancel := context.WithTimeout(w.ctx, queueLockWait)
	defer cancel()
	unlock, err = lockStorage(ctx, w.q.storage, key)
	if err != nil {
		if w.ctx.Err() == nil {
			w.logOnce("lock "+id, "queue: the storage lock of a queued delivery stays held; its return waits",
				zap.String("id", id), zap.Duration("held_for", w.now().Sub(b.since).Round(time.Second)), zap.Error(err))
		}
		return nil, nil
	}
	return unlock, b
}

// attempt tries one item under its storage lock, re-reading it first: if
// another gateway delivered it or attempted it meanwhile, it does nothing.
func (w *worker) attempt(c candidate) {
	ctx, id, probe := w.ctx, c.item.ID, c.probe
	unlock, busy := w.lock(id)
	if unlock == nil {
		return // held by another gateway's attempt, or stuck: lock says
	}
	defer unlock(ctx, w.logger)
	it, err := w.q.loadItem(ctx, id)
	w.mu.Lock()
	delete(w.busy, id)
	w.mu.Unlock()
	if err != nil {
		return // delivered or dropped by another gateway, or unreadable: the scan says
	}
	if busy != nil && versionOf(it) == busy.seen {
		w.logger.Error("queue: took over the storage lock of a queued delivery, left behind by a crash or a failed write",
			zap.String("id", id), zap.Duration("held_for", w.now().Sub(busy.since).Round(time.Second)))
	}
	w.mu.Lock()
	due := w.isDue(it, w.now())
	w.mu.Unlock()
	if !due {
		w.remember(it)
		return
	}
	if c.relist {
		w.logger.Warn("queue: a pending delivery first in its return's line was not listed by the storage (a delete that failed half-way?); storing it again",
			zap.String("id", id))
		if err := w.q.storeItem(ctx, it); err != nil {
			w.logOnce("store "+id, "queue: storing a queued delivery again failed", zap.String("id", id), zap.Error(err))
			return
		}
	}
	if c.expire {
		w.expire(ctx, it)
		return
	}
	// The scan's view of the line may have caught an enqueue between its
	// two writes (the item stored, the line not yet): ask again under the
	// return's lock.
	if first, err := w.q.firstInLine(ctx, it); err != nil || !first {
		if err != nil && ctx.Err() == nil {
			w.logOnce("line "+it.DeviceReturnID, "queue: reading a return's line failed", zap.Error(err))
		}
		return
	}

	// Fencing: a storage lock can be lost while held (a networked storage
	// unreachable for longer than its TTL) or broken as stale, and another
	// gateway may have taken the item meanwhile. Read it again right before
	// the step that cannot be undone; record the outcome only over the
	// version attempted.
	was := versionOf(it)
	if cur, err := w.q.loadItem(ctx, id); err != nil || versionOf(cur) != was {
		w.lostLock(id, err)
		return
	}
	if w.pausedNow(ctx, it.path()) { // paused since the scan read it
		w.remember(it)
		return
	}
	n := it.Attempts + 1
	started := w.now()
	res := w.app.deliver(ctx, it, n)
	res.probe = probe
	store := context.WithoutCancel(ctx)
	it.Attempts, it.LastAttemptAt = n, &started
	it.LastStatus, it.LastUpstream, it.LastError = res.status, res.upstream, res.errText
	now := w.now()
	switch {
	case res.delivered:
		err = retryStorage(store, func() error { return w.q.deleteItem(store, id) })
		if err == nil {
			err = retryStorage(store, func() error { return w.q.leaveLine(store, it.DeviceReturnID, id) })
		}
		w.app.recordItem(it, OutcomeRedelivered, "", res)
		w.app.metrics.redelivery(redeliveryDelivered, probe)
		w.logger.Info("queued delivery redelivered", zap.String("id", id), zap.Int("attempt", n), zap.Int("status", res.upstream))
		w.kick(it.path())
	case res.refused || !now.Before(it.deadline()):
		reason := ReasonMaxAge
		if res.refused {
			reason = ReasonAppRefused
			w.kick(it.path()) // the app answered: it is up
		} else {
			w.failed(it.path(), now, res.retryAfter, probe)
		}
		it.Status, it.NextAttemptAt = ItemDead, nil
		var stored bool
		if stored, err = w.q.storeIfUnchanged(store, it, was); stored {
			err = w.q.leaveLine(store, it.DeviceReturnID, id)
		} else if err == nil {
			w.lostLock(id, nil)
		}
		w.app.recordItem(it, OutcomeDead, reason, res)
		w.app.metrics.redelivery(redeliveryDead, probe)
		w.logger.Error("queued delivery given up on (dead); retry it by hand", zap.String("id", id), zap.Int("attempt", n),
			zap.String("reason", string(reason)), zap.String("error", res.errText))
	default:
		w.failed(it.path(), now, res.retryAfter, probe)
		next := nextAttempt(it, n, now, res.retryAfter)
		it.NextAttemptAt = &next
		var stored bool
		if stored, err = w.q.storeIfUnchanged(store, it, was); !stored && err == nil {
			w.lostLock(id, nil)
		}
		w.app.recordItem(it, OutcomeRetrying, res.reason, res)
		w.app.metrics.redelivery(redeliveryFailed, probe)
		w.logger.Warn("redelivery attempt failed; will try again", zap.String("id", id), zap.Int("attempt", n),
			zap.Bool("probe", probe), zap.String("error", res.errText), zap.Time("next_attempt_at", next))
	}
	if err != nil {
		w.logger.Error("queue: recording an attempt", zap.String("id", id), zap.Error(err))
	}
	w.remember(it)
}

// lostLock logs that item id changed (or could not be read) while this
// gateway held its lock: the lock was lost or broken, and another gateway
// took the item. Nothing is sent or recorded over the other's record; the
// app may get the delivery twice, with the same delivery id.
func (w *worker) lostLock(id string, err error) {
	fields := []zap.Field{zap.String("id", id)}
	if err != nil {
		fields = append(fields, zap.Error(err))
	}
	w.logger.Warn("queue: a queued delivery changed while this gateway held its storage lock (the lock was lost or broken); leaving it to the gateway that took it", fields...)
}

// expire gives up on a pending item whose max_age passed while its route's
// app was failing (it was not tried again: the route's probe was).
func (w *worker) expire(ctx context.Context, it *queueItem) {
	now := w.now()
	if now.Before(it.deadline()) {
		return
	}
	store := context.WithoutCancel(ctx)
	it.Status, it.NextAttemptAt = ItemDead, nil
	err := w.q.storeItem(store, it)
	if err == nil {
		err = w.q.leaveLine(store, it.DeviceReturnID, it.ID)
	}
	res := attemptResult{status: it.LastStatus, upstream: it.LastUpstream, errText: it.LastError}
	w.app.recordItem(it, OutcomeDead, ReasonMaxAge, res)
	w.app.metrics.redelivery(redeliveryDead, false)
	w.logger.Error("queued delivery given up on (dead) while its route's app was failing; retry it by hand",
		zap.String("id", it.ID), zap.Int("attempts", it.Attempts), zap.String("reason", string(ReasonMaxAge)),
		zap.String("error", it.LastError))
	if err != nil {
		w.logger.Error("queue: recording an attempt", zap.String("id", it.ID), zap.Error(err))
	}
	w.remember(it)
}

// forget drops what the worker knows of id, so the next scan reads it
// afresh (an operator changed it).
func (w *worker) forget(id string) {
	if w == nil {
		return
	}
	w.mu.Lock()
	delete(w.items, id)
	w.mu.Unlock()
}

// remember updates the cached schedule of it (the next scan re-reads it).
func (w *worker) remember(it *queueItem) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c := w.items[it.ID]; c != nil {
		cp := *it
		cp.Body, cp.Header, cp.Raw = nil, nil, nil
		c.item, c.modified = &cp, time.Time{}
	}
}
