package rereadyverify

import (
	"context"
	"errors"
	"math/rand/v2"
	"net/http"
	"strconv"
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
// This file holds the worker's settings, backoff, lifecycle and scan;
// worker_attempt.go chooses what is due and makes the attempts.
//
// While a route's app is failing (its last attempt or live delivery
// failed), only one delivery of that route is tried at a time, the oldest
// due, as a probe, at growing intervals; a probe or a live delivery that
// succeeds releases the rest.

// Worker timing.
const (
	// lockTakeoverAfter is how long an item's storage lock may be found
	// held before the worker waits for it with the storage's own Lock,
	// which breaks a lock left behind by a crash or a failed write.
	lockTakeoverAfter = 10 * time.Second

	// probeAfter is how many deliveries of a route must fail in a row
	// (attempts and live ones, with no success between) before its app
	// counts as failing and only probes are sent: a flapping app's single
	// failures do not slow the rest.
	probeAfter = 3

	// maxProbeInterval caps the pause between probes of a failing route.
	maxProbeInterval = 30 * time.Second

	// logEvery spaces repeated error lines about the same thing.
	logEvery = time.Minute
)

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
	routes   map[string]*route    // route path -> state, while its app fails
	busy     map[string]*busyLock // item id -> since when its lock is held elsewhere
	logged   map[string]time.Time // what was last logged when, for logOnce
	scanned  atomic.Uint64        // scans completed, for the metric

	pending atomic.Int64
	dead    atomic.Int64
	oldest  atomic.Int64 // unix nanoseconds of the oldest pending item's arrival; 0 if none

	pausedPaths []string // as the last scan read them (pause.go), for the gauge; the scan's own
}

// route is what the worker knows of a route whose deliveries fail.
type route struct {
	failingSince time.Time // the first failure of the streak
	failures     int       // attempts and live deliveries failed in a row
	probes       int       // probes failed in a row
	nextProbe    time.Time // no probe before this
	probe        string    // the probe in flight; "" if none
}

// probing reports whether the route's app counts as failing.
func (r *route) probing() bool { return r != nil && r.failures >= probeAfter }

// busyLock is an item whose storage lock was found held, and the item as
// the worker knew it then: if it is unchanged once the lock is taken, the
// holder never finished, and left the lock behind.
type busyLock struct {
	since time.Time
	seen  itemVersion
}

// The worker's settings, and when an item is tried again.
const (
	// redeliveryScanInterval is how often the storage is looked at for
	// deliveries that are due (queued by this or another gateway).
	redeliveryScanInterval = 2 * time.Second

	// restatEvery is how many scans apart the worker re-checks every known
	// item for changes made by other gateways; in between it reads only
	// new items (its own changes it knows).
	restatEvery = 10

	// stopGrace is how long stopping the worker (a reload) waits for the
	// attempts in flight before it cuts them short.
	stopGrace = 5 * time.Second

	// redeliveryConcurrency bounds attempts in flight per gateway.
	redeliveryConcurrency = 4

	// maxRetryAfter bounds how long an app's Retry-After may postpone an
	// attempt.
	maxRetryAfter = 24 * time.Hour
)

// backoffSteps are the delays after attempt 1, 2, ...; hourly after them.
var backoffSteps = []time.Duration{
	time.Second, 5 * time.Second, 15 * time.Second, 30 * time.Second, time.Minute,
	2 * time.Minute, 5 * time.Minute, 10 * time.Minute, 30 * time.Minute,
}

// backoff is the delay after the given attempt, with ±20 % jitter.
func backoff(attempt int) time.Duration {
	d := time.Hour
	if attempt >= 1 && attempt <= len(backoffSteps) {
		d = backoffSteps[attempt-1]
	}
	return time.Duration(float64(d) * (0.8 + 0.4*rand.Float64()))
}

// retryAfter parses a Retry-After value (seconds or an HTTP date) relative
// to now; ok is false when there is none or it does not parse.
func retryAfter(v string, now time.Time) (time.Duration, bool) {
	if v == "" {
		return 0, false
	}
	var d time.Duration
	if secs, err := strconv.ParseUint(v, 10, 32); err == nil {
		d = time.Duration(secs) * time.Second
	} else if at, err := http.ParseTime(v); err == nil {
		d = at.Sub(now)
	} else {
		return 0, false
	}
	return min(max(d, time.Second), maxRetryAfter), true
}

// nextAttempt is when to try an item again after attempt failed at now,
// never after its deadline.
func nextAttempt(it *queueItem, attempt int, now time.Time, retryAfterValue string) time.Time {
	d, ok := retryAfter(retryAfterValue, now)
	if !ok {
		d = backoff(attempt)
	}
	next := now.Add(d)
	if dl := it.deadline(); next.After(dl) {
		next = dl
	}
	return next
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
		now:      app.now,
		interval: redeliveryScanInterval,
		kickCh:   make(chan struct{}, 1),
		quit:     make(chan struct{}),
		slots:    make(chan struct{}, redeliveryConcurrency),
		ctx:      ctx,
		cancel:   cancel,
		items:    map[string]*cachedItem{},
		inFlight: map[string]bool{},
		kicks:    map[string]time.Time{},
		routes:   map[string]*route{},
		busy:     map[string]*busyLock{},
		logged:   map[string]time.Time{},
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
	failing := w.routes[path].probing()
	delete(w.routes, path)
	w.mu.Unlock()
	if failing {
		w.logger.Info("queue: the app of a route answers again; its waiting deliveries go now", zap.String("path", path))
	}
	if w.pending.Load() > 0 || failing {
		w.wake()
	}
}

// failed records that a delivery on path failed (live, or an attempt; a
// probe if probe), at now; ra is the app's Retry-After, if any. After
// probeAfter failures in a row the route is tried by one probe at a time
// until a delivery on it succeeds: the first probe a second later, then
// at the backoff steps (at most maxProbeInterval apart), or when the
// app's Retry-After says.
func (w *worker) failed(path string, now time.Time, ra string, probe bool) {
	if w == nil {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	r := w.routes[path]
	if r == nil {
		r = &route{failingSince: now}
		w.routes[path] = r
	}
	r.failures++
	switch {
	case r.failures == probeAfter:
		w.logger.Warn("queue: the app of a route is failing; trying one delivery at a time until it answers",
			zap.String("path", path), zap.Time("failing_since", r.failingSince))
		r.nextProbe = now.Add(backoff(1))
	case probe:
		r.probes++
		r.nextProbe = now.Add(min(backoff(r.probes+1), maxProbeInterval))
	default:
		return // a live delivery or an attempt begun before: the probes keep their pace
	}
	if d, ok := retryAfter(ra, now); ok {
		r.nextProbe = now.Add(d)
	}
}

// failingSince is when the app of path began failing, as this gateway
// saw it; zero while it is not failing.
func (w *worker) failingSince(path string) time.Time {
	if w == nil {
		return time.Time{}
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	if r := w.routes[path]; r.probing() {
		return r.failingSince
	}
	return time.Time{}
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
	defer w.scanned.Add(1)
	ctx, cancel := context.WithTimeout(w.ctx, time.Minute)
	defer cancel()
	if err := w.refresh(ctx); err != nil {
		if w.ctx.Err() == nil {
			w.logOnce("list", "queue: listing queued deliveries failed; trying again at the next scan", zap.Error(err))
		}
		return w.interval
	}
	w.recovered("list", "queue: listing queued deliveries works again")
	now := w.now()
	wait := w.interval
	for _, c := range w.due(ctx, now, cap(w.slots)-len(w.slots)) {
		select {
		case <-w.quit:
			return wait // stopping: no new attempt
		case w.slots <- struct{}{}:
		default:
			return wait // all slots busy; an attempt ending wakes the loop
		}
		w.mu.Lock()
		w.inFlight[c.item.ID] = true
		w.mu.Unlock()
		w.wg.Add(1)
		go func(c candidate) {
			defer w.wg.Done()
			defer func() {
				w.mu.Lock()
				delete(w.inFlight, c.item.ID)
				if r := w.routes[c.item.path()]; r != nil && r.probe == c.item.ID {
					r.probe = ""
				}
				w.mu.Unlock()
				<-w.slots
				w.wake()
			}()
			w.attempt(c)
		}(c)
	}
	w.mu.Lock()
	for _, c := range w.items {
		if c.item.Status == ItemPending && c.item.NextAttemptAt != nil {
			if d := c.item.NextAttemptAt.Sub(now); d > 0 && d < wait {
				wait = d
			}
		}
	}
	for _, r := range w.routes {
		if d := r.nextProbe.Sub(now); r.probing() && d > 0 && d < wait {
			wait = d
		}
	}
	w.mu.Unlock()
	return max(wait, 10*time.Millisecond)
}

// refresh reads the items that are new since the last scan and, every
// restatEvery scans, the ones that changed; it sets aside the ones that
// cannot be read. A listing that fails changes nothing.
func (w *worker) refresh(ctx context.Context) error {
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
			continue // gone meanwhile, being written, or unreadable: the load below would say
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
			w.logOnce("read "+id, "queue: cannot read a queued delivery; skipping it", zap.String("id", id), zap.Error(err))
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
	for id, c := range w.items {
		if !seen[id] {
			delete(w.items, id)
			delete(w.busy, id)
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
	w.app.recordItem(it, OutcomeDead, ReasonCorrupt, attemptResult{})
	w.app.metrics.redelivery(redeliveryDead, false)
	return it, nil
}

// logOnce logs msg at error level, then again only after logEvery while
// what stays the same (a failing listing, an unreadable item).
func (w *worker) logOnce(what, msg string, fields ...zap.Field) {
	w.mu.Lock()
	last, seen := w.logged[what]
	now := w.now()
	if !seen || now.Sub(last) >= logEvery {
		w.logged[what] = now
	}
	w.mu.Unlock()
	if !seen || now.Sub(last) >= logEvery {
		w.logger.Error(msg, fields...)
	}
}

// recovered logs msg once when what, logged by logOnce, works again.
func (w *worker) recovered(what, msg string) {
	w.mu.Lock()
	_, seen := w.logged[what]
	delete(w.logged, what)
	w.mu.Unlock()
	if seen {
		w.logger.Info(msg)
	}
}
