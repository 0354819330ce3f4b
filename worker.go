package rereadyverify

import (
	"context"
	"errors"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
)

// This file is the redelivery worker of the reready app: one per running
// config with a handler that queues, started and stopped with the config.
// Every scan it reads the queue from storage (new items each time, every
// item now and then, for what other gateways changed), picks the due
// deliveries that are first in their return's line, and attempts each
// under its storage lock (redeliver.go sends it), recording the outcome.

// worker redelivers the queue of one storage for one running config.
type worker struct {
	app      *App
	q        *queue
	logger   *zap.Logger
	now      func() time.Time
	interval time.Duration

	kickCh chan struct{}
	quit   chan struct{} // closed by stop: no new scan or attempt
	slots  chan struct{}
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	scans    int
	items    map[string]*cachedItem
	inFlight map[string]bool
	kicks    map[string]time.Time // route path -> last success seen
	warned   map[string]bool      // unreadable items already logged

	// What the live path needs to know whether a return may be held: the
	// returns that had a line at the last scan (by digest), those queued
	// here since, and when the last scan listed and ended.
	lines     map[[16]byte]bool
	noted     map[[16]byte]time.Time
	listedAt  time.Time
	scannedAt time.Time

	pending atomic.Int64
	dead    atomic.Int64
	oldest  atomic.Int64 // unix nanoseconds of the oldest pending item's arrival; 0 if none
}

// cachedItem is an item's schedule, as last read; its body is not kept.
type cachedItem struct {
	item     *queueItem
	modified time.Time
	size     int64
}

func newWorker(app *App, q *queue, logger *zap.Logger) *worker {
	ctx, cancel := context.WithCancel(context.Background())
	return &worker{
		app:      app,
		q:        q,
		logger:   logger,
		now:      time.Now,
		interval: redeliveryScanInterval,
		kickCh:   make(chan struct{}, 1),
		quit:     make(chan struct{}),
		slots:    make(chan struct{}, redeliveryConcurrency),
		ctx:      ctx,
		cancel:   cancel,
		items:    map[string]*cachedItem{},
		inFlight: map[string]bool{},
		kicks:    map[string]time.Time{},
		warned:   map[string]bool{},
		lines:    map[[16]byte]bool{},
		noted:    map[[16]byte]time.Time{},
	}
}

func (w *worker) start() {
	w.wg.Add(1)
	go w.loop()
}

// stop ends the loop, lets the attempts in flight finish for up to
// stopGrace (a reload stops the old config's worker; an attempt cut short
// counts as failed, and if the app had taken it, it is sent again later)
// and waits for them.
func (w *worker) stop() {
	if w == nil {
		return
	}
	close(w.quit)
	done := make(chan struct{})
	go func() { w.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(stopGrace):
		w.cancel()
		<-done
	}
	w.cancel()
}

// kick makes the pending items of a route due now: the app answered a
// delivery on it, so it is back.
func (w *worker) kick(path string) {
	if w == nil {
		return
	}
	// Recorded even when nothing seems pending: an item queued a moment
	// ago (here, or by another gateway) is not counted until the next scan.
	w.mu.Lock()
	w.kicks[path] = w.now()
	w.mu.Unlock()
	if w.pending.Load() > 0 {
		w.wake()
	}
}

// note records that a delivery of returnID was queued here, so the live
// path holds the return before the next scan sees the item.
func (w *worker) note(returnID string) {
	if w == nil {
		return
	}
	d := returnDigest(returnID)
	w.mu.Lock()
	w.noted[d] = w.now()
	w.mu.Unlock()
}

// mayBeHeld reports whether returnID may have pending deliveries, so the
// live path asks the storage only then (a lookup costs a storage read per
// delivery). It says yes for a return that had a line at the last scan
// (which lists the lines in storage, whoever made them) or was queued here
// since, and for every return while the scans are not current (none yet,
// or none within three intervals). A delivery another gateway queued, or
// an operator retried, holds the return here from this gateway's next
// scan on.
func (w *worker) mayBeHeld(returnID string) bool {
	d := returnDigest(returnID)
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.scannedAt.IsZero() || w.now().Sub(w.scannedAt) > 3*w.interval {
		return true
	}
	_, noted := w.noted[d]
	return noted || w.lines[d]
}

// wake runs a scan now.
func (w *worker) wake() {
	if w == nil {
		return
	}
	select {
	case w.kickCh <- struct{}{}:
	default:
	}
}

func (w *worker) loop() {
	defer w.wg.Done()
	// The first scan waits a moment, so the servers it re-enters have
	// started (apps start in no set order).
	timer := time.NewTimer(250 * time.Millisecond)
	defer timer.Stop()
	for {
		select {
		case <-w.quit:
			return
		case <-timer.C:
		case <-w.kickCh:
		}
		wait := w.scan()
		timer.Reset(wait)
	}
}

// scan refreshes the schedule from storage, starts the attempts that are
// due, and returns how long to wait for the next scan.
func (w *worker) scan() time.Duration {
	ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
	defer cancel()
	if err := w.refresh(ctx); err != nil {
		if w.ctx.Err() == nil {
			w.logger.Error("queue: listing queued deliveries", zap.Error(err))
		}
		return w.interval
	}
	now := w.now()
	wait := w.interval
	for _, it := range w.due(ctx, now, cap(w.slots)-len(w.slots)) {
		select {
		case <-w.quit:
			return wait // stopping: no new attempt
		case w.slots <- struct{}{}:
		default:
			return wait // all slots busy; an attempt ending wakes the loop
		}
		w.mu.Lock()
		w.inFlight[it.ID] = true
		w.mu.Unlock()
		w.wg.Add(1)
		go func(id string) {
			defer w.wg.Done()
			defer func() {
				w.mu.Lock()
				delete(w.inFlight, id)
				w.mu.Unlock()
				<-w.slots
				w.wake()
			}()
			w.attempt(id)
		}(it.ID)
	}
	w.mu.Lock()
	for _, c := range w.items {
		if c.item.Status == ItemPending && c.item.NextAttemptAt != nil {
			if d := c.item.NextAttemptAt.Sub(now); d > 0 && d < wait {
				wait = d
			}
		}
	}
	w.mu.Unlock()
	return max(wait, 10*time.Millisecond)
}

// refresh reads the items that are new since the last scan and, every
// restatEvery scans, the ones that changed; it sets aside the ones that
// cannot be read.
func (w *worker) refresh(ctx context.Context) error {
	listedAt := w.now()
	lines, err := w.q.lines(ctx)
	if err != nil {
		return err
	}
	ids, err := w.q.ids(ctx)
	if err != nil {
		return err
	}
	w.mu.Lock()
	full := w.scans%restatEvery == 0
	w.scans++
	w.mu.Unlock()
	seen := make(map[string]bool, len(ids))
	for _, id := range ids {
		seen[id] = true
		w.mu.Lock()
		c := w.items[id]
		w.mu.Unlock()
		if c != nil && !full {
			continue
		}
		info, err := w.q.storage.Stat(ctx, itemKey(id))
		if err != nil {
			continue // gone meanwhile, or unreadable: the load below would say
		}
		if c != nil && c.modified.Equal(info.Modified) && c.size == info.Size {
			continue
		}
		it, err := w.q.loadItem(ctx, id)
		switch {
		case errors.Is(err, errItemNotFound):
			continue
		case errors.Is(err, errItemCorrupt):
			it, err = w.setAside(ctx, id, err)
		}
		if err != nil {
			w.warnOnce(id, "queue: cannot read a queued delivery; skipping it", err)
			continue
		}
		it.Body, it.Header, it.Raw = nil, nil, nil
		w.mu.Lock()
		w.items[id] = &cachedItem{item: it, modified: info.Modified, size: info.Size}
		w.mu.Unlock()
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	var pending, dead int64
	var oldest time.Time
	w.lines = lines
	for id, c := range w.items {
		if !seen[id] {
			delete(w.items, id)
			continue
		}
		if c.item.Status == ItemDead {
			dead++
			continue
		}
		pending++
		if oldest.IsZero() || c.item.ReceivedAt.Before(oldest) {
			oldest = c.item.ReceivedAt
		}
	}
	for id, at := range w.noted {
		if at.Before(listedAt) { // stored before the listing: in w.lines now
			delete(w.noted, id)
		}
	}
	w.listedAt, w.scannedAt = listedAt, w.now()
	w.pending.Store(pending)
	w.dead.Store(dead)
	if oldest.IsZero() {
		w.oldest.Store(0)
	} else {
		w.oldest.Store(oldest.UnixNano())
	}
	return nil
}

// setAside handles an item that does not parse: logged, rewritten as a
// dead item with its error, journaled and announced, once.
func (w *worker) setAside(ctx context.Context, id string, cause error) (*queueItem, error) {
	w.logger.Error("queue: a queued delivery is corrupt; setting it aside as dead", zap.String("id", id), zap.Error(cause))
	it, err := w.q.setAside(ctx, id, cause)
	if err != nil {
		return nil, err
	}
	if it == nil { // rewritten meanwhile by another gateway
		return w.q.loadItem(ctx, id)
	}
	w.app.recordItem(it, OutcomeDead, ReasonCorrupt, attemptResult{}, w.now())
	w.app.metrics.redelivery(redeliveryDead)
	return it, nil
}

func (w *worker) warnOnce(id, msg string, err error) {
	w.mu.Lock()
	first := !w.warned[id]
	w.warned[id] = true
	w.mu.Unlock()
	if first {
		w.logger.Error(msg, zap.String("id", id), zap.Error(err))
	}
}

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

// due returns up to limit items to attempt now, the longest waiting
// first: due, not in flight here, and first in their return's line. It
// reads the line of a return only when one of its items is a candidate.
func (w *worker) due(ctx context.Context, now time.Time, limit int) []*queueItem {
	w.mu.Lock()
	var cands []*queueItem
	for _, c := range w.items {
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
		head string
		ids  []string
	}
	lines := map[string]*line{}
	var out []*queueItem
	for _, it := range cands {
		if len(out) >= limit {
			break
		}
		l := lines[it.DeviceReturnID]
		if l == nil {
			rec, err := w.q.loadReturn(ctx, it.DeviceReturnID)
			if err != nil {
				w.logger.Warn("queue: reading a return's line", zap.Error(err))
				continue
			}
			l = &line{head: w.head(ctx, rec), ids: rec.IDs}
			lines[it.DeviceReturnID] = l
		}
		// An item missing from its line (a gateway stopped between storing
		// the two) holds nothing back and is not held.
		if it.ID == l.head || !slices.Contains(l.ids, it.ID) {
			out = append(out, it)
		}
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
			w.logger.Warn("queue: taking a stale delivery out of its return's line", zap.Error(err))
			return id
		}
	}
	return head
}

// attempt tries one item under its storage lock, re-reading it first: if
// another gateway delivered it or attempted it meanwhile, it does nothing.
func (w *worker) attempt(id string) {
	ctx := w.ctx
	locked, err := tryLock(ctx, w.q.storage, itemKey(id))
	if err != nil || !locked {
		return // another gateway holds it
	}
	name := lockName(itemKey(id))
	defer func() {
		if err := w.q.storage.Unlock(context.WithoutCancel(ctx), name); err != nil {
			w.logger.Error("queue: unlocking a delivery", zap.String("id", id), zap.Error(err))
		}
	}()
	it, err := w.q.loadItem(ctx, id)
	if err != nil {
		return // delivered or dropped by another gateway, or unreadable: the scan says
	}
	w.mu.Lock()
	due := w.isDue(it, w.now())
	w.mu.Unlock()
	if !due {
		w.remember(it)
		return
	}
	// The scan's view of the line may have caught an enqueue between its
	// two writes (the item stored, the line not yet): ask again under the
	// return's lock.
	if first, err := w.q.firstInLine(ctx, it); err != nil || !first {
		return
	}

	n := it.Attempts + 1
	started := w.now()
	res := w.app.deliver(ctx, it, n)
	store := context.WithoutCancel(ctx)
	it.Attempts, it.LastAttemptAt = n, &started
	it.LastStatus, it.LastError = res.upstream, res.errText
	now := w.now()
	switch {
	case res.delivered:
		err = w.q.deleteItem(store, id)
		if err == nil {
			err = w.q.leaveLine(store, it.DeviceReturnID, id)
		}
		w.app.recordItem(it, OutcomeRedelivered, "", res, now)
		w.app.metrics.redelivery(redeliveryDelivered)
		w.logger.Info("queued delivery redelivered", zap.String("id", id), zap.Int("attempt", n), zap.Int("status", res.upstream))
		w.kick(it.path())
	case res.refused || !now.Before(it.deadline()):
		reason := ReasonMaxAge
		if res.refused {
			reason = ReasonAppRefused
		}
		it.Status, it.NextAttemptAt = ItemDead, nil
		if err = w.q.storeItem(store, it); err == nil {
			err = w.q.leaveLine(store, it.DeviceReturnID, id)
		}
		w.app.recordItem(it, OutcomeDead, reason, res, now)
		w.app.metrics.redelivery(redeliveryDead)
		w.logger.Error("queued delivery given up on (dead); retry it by hand", zap.String("id", id), zap.Int("attempt", n),
			zap.String("reason", string(reason)), zap.String("error", res.errText))
	default:
		next := nextAttempt(it, n, now, res.retryAfter)
		it.NextAttemptAt = &next
		err = w.q.storeItem(store, it)
		w.app.recordItem(it, OutcomeQueued, res.reason, res, now)
		w.app.metrics.redelivery(redeliveryFailed)
		w.logger.Warn("redelivery attempt failed; will try again", zap.String("id", id), zap.Int("attempt", n),
			zap.String("error", res.errText), zap.Time("next_attempt_at", next))
	}
	if err != nil {
		w.logger.Error("queue: recording an attempt", zap.String("id", id), zap.Error(err))
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
