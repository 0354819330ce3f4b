package rereadyverify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// This file is the redelivery worker: it runs in the reready app (started
// and stopped with the config), finds queued deliveries that are due in
// the storage, and sends each through the same route as the live request,
// as the configuration is now. It re-enters the site's Caddy server in
// process with the request as it arrived (host, URI without the token,
// remote address, headers, body) and a context marker of an unexported
// type, which no client can forge: the reready_verify handler on that
// route recognises the marker and, instead of verifying again (the
// signature's t is stale by now), passes the stored delivery on with its
// trusted headers, then reports what the rest of the route answered.

// redeliveryKey is the context key of a redelivery marker.
type redeliveryKey struct{}

// redelivery is the marker: the item being attempted, and what the
// handler that took it saw.
type redelivery struct {
	item    *queueItem
	attempt int

	mu       sync.Mutex
	taken    bool  // a reready_verify handler took it
	returned bool  // next returned (did not panic)
	status   int   // the status the rest of the route wrote
	err      error // what next returned
}

// take claims the marker for one handler; a second reready_verify handler
// on the same route treats the request as a live one.
func (rd *redelivery) take() bool {
	rd.mu.Lock()
	defer rd.mu.Unlock()
	if rd.taken {
		return false
	}
	rd.taken = true
	return true
}

func redeliveryFrom(ctx context.Context) *redelivery {
	rd, _ := ctx.Value(redeliveryKey{}).(*redelivery)
	return rd
}

// Redelivery timing.
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

	// redeliveryAttemptTimeout bounds one attempt.
	redeliveryAttemptTimeout = 2 * time.Minute

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

// attemptResult is what one attempt came to.
type attemptResult struct {
	delivered  bool
	status     int    // the app's answer, or Caddy's error status
	upstream   int    // the app's answer; 0 when none
	retryAfter string // the app's Retry-After
	reason     Reason // why it failed
	errText    string // what failed, for the item's last_error
	refused    bool   // retrying cannot change it: a 4xx other than 408 and 429
	duration   time.Duration
}

// refused reports an answer that retrying cannot change: a 4xx other than
// 408 and 429.
func refused(status int) bool {
	return status >= 400 && status < 500 && !queueable(status)
}

// queueable reports a status the queue takes over: 5xx, 408 and 429.
func queueable(status int) bool {
	return status >= 500 || status == http.StatusRequestTimeout || status == http.StatusTooManyRequests
}

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
	for _, id := range rec.IDs {
		it, err := w.q.loadItem(ctx, id)
		if err == nil && it.Status == ItemPending {
			return id
		}
		if err != nil && !errors.Is(err, errItemNotFound) && !errors.Is(err, errItemCorrupt) {
			return id // unreadable now: keep the order
		}
		if err := w.q.leaveLine(ctx, rec.DeviceReturnID, id); err != nil {
			w.logger.Warn("queue: taking a stale delivery out of its return's line", zap.Error(err))
			return id
		}
	}
	return ""
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

// deliver sends it through its route once, in process, as attempt n.
func (a *App) deliver(ctx context.Context, it *queueItem, n int) (res attemptResult) {
	start := time.Now()
	rd := &redelivery{item: it, attempt: n}
	defer func() {
		if p := recover(); p != nil {
			// An abort after the app answered 2xx (its answer's copy
			// failed) was still a delivery.
			rd.mu.Lock()
			code := rd.status
			rd.mu.Unlock()
			res = attemptResult{status: http.StatusBadGateway, reason: ReasonRedeliveryFailed,
				errText: clipTo(fmt.Sprintf("the route panicked: %v", p), 300)}
			if code >= 200 && code < 300 {
				res = attemptResult{delivered: true, status: code, upstream: code}
			}
		}
		res.duration = time.Since(start)
	}()
	srv := a.server(it.Server, it.Port)
	if srv == nil {
		return attemptResult{status: http.StatusBadGateway, reason: ReasonRouteUnavailable,
			errText: fmt.Sprintf("no server of the running config listens on port %d (the delivery came through server %q)", it.Port, it.Server)}
	}
	actx, cancel := context.WithTimeout(ctx, redeliveryAttemptTimeout)
	defer cancel()
	req, err := it.request(context.WithValue(actx, redeliveryKey{}, rd))
	if err != nil {
		return attemptResult{status: http.StatusBadGateway, reason: ReasonRouteUnavailable, errText: err.Error()}
	}
	rw := &discardWriter{header: http.Header{}}
	srv.ServeHTTP(rw, req)

	rd.mu.Lock()
	defer rd.mu.Unlock()
	res = attemptResult{status: rw.code, retryAfter: rw.header.Get("Retry-After")}
	switch {
	case !rd.taken:
		res.reason = ReasonRouteUnavailable
		res.errText = fmt.Sprintf("the route for %s%s no longer reaches reready_verify (it answered %d)", it.Host, it.path(), rw.code)
		return res
	}
	// What the app answered decides, as for a live delivery (a 2xx whose
	// copy then failed was delivered); without an answer, the error.
	res.upstream = rd.status
	if rd.status == 0 && rd.returned && rd.err == nil {
		res.upstream = http.StatusOK // nothing written: net/http answers 200
	}
	res.delivered = res.upstream >= 200 && res.upstream < 300
	res.status = res.upstream
	switch {
	case res.delivered:
		return res
	case res.upstream != 0:
		res.reason = ReasonRedeliveryFailed
		res.errText = fmt.Sprintf("the app answered %d", res.upstream)
	default:
		res.status = http.StatusBadGateway
		var he caddyhttp.HandlerError
		if errors.As(rd.err, &he) && he.StatusCode != 0 {
			res.status = he.StatusCode
		}
		res.reason = ReasonRedeliveryFailed
		if errors.Is(rd.err, context.DeadlineExceeded) || actx.Err() != nil {
			res.reason = ReasonRedeliveryTimeout
		}
		if rd.err != nil {
			res.errText = clipError(rd.err)
		} else {
			res.errText = "the route ended the request without an answer"
		}
	}
	// A 4xx other than 408 and 429, from the app or a handler of the
	// route (an authentication that now refuses it), will not change.
	res.refused = refused(res.status)
	return res
}

// clipError shortens an error for last_error and logs; a handler error
// reads "HTTP <status>: <cause>", without Caddy's trace prefix.
func clipError(err error) string {
	s := err.Error()
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.Err != nil {
		s = fmt.Sprintf("HTTP %d: %v", he.StatusCode, he.Err)
	}
	if len(s) > 300 {
		s = s[:300] + "…"
	}
	return s
}

// request rebuilds the request as it arrived, for the in-process server.
// Its body cannot be read (sealedBody): the reready_verify handler that
// takes the redelivery forwards its own copy of the stored body, and a
// route that no longer reaches one (a reload moved or removed it) must not
// pass the delivery on without the gateway's headers, and again at every
// attempt, since the worker counts such an attempt as failed.
func (it *queueItem) request(ctx context.Context) (*http.Request, error) {
	u, err := url.ParseRequestURI(it.URI)
	if err != nil {
		return nil, fmt.Errorf("stored URI %q: %v", clip(it.URI), err)
	}
	r := &http.Request{
		Method:        http.MethodPost,
		URL:           u,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        it.Header.Clone(),
		Host:          it.Host,
		RequestURI:    it.URI,
		RemoteAddr:    it.RemoteAddr,
		Body:          sealedBody{},
		ContentLength: int64(len(it.Body)),
	}
	if r.Header == nil {
		r.Header = http.Header{}
	}
	if it.TLS {
		host, _, err := net.SplitHostPort(it.Host)
		if err != nil {
			host = it.Host
		}
		r.TLS = &tls.ConnectionState{HandshakeComplete: true, ServerName: host}
	}
	return r.WithContext(ctx), nil
}

// sealedBody is the body of a redelivery's request before a reready_verify
// handler takes it: reading it fails, so nothing else in the route can
// send the stored delivery anywhere.
type sealedBody struct{}

var errSealedBody = errors.New("reready_verify: a redelivery's body is sent only by the reready_verify handler that takes it")

func (sealedBody) Read([]byte) (int, error) { return 0, errSealedBody }
func (sealedBody) Close() error             { return nil }

// discardWriter is the response writer of an in-process redelivery: it
// keeps the status and headers and throws the body away.
type discardWriter struct {
	header http.Header
	code   int
}

func (d *discardWriter) Header() http.Header { return d.header }

func (d *discardWriter) WriteHeader(code int) {
	if d.code == 0 && code >= 200 {
		d.code = code
	}
}

func (d *discardWriter) Write(p []byte) (int, error) {
	if d.code == 0 {
		d.code = http.StatusOK
	}
	return len(p), nil
}

func (d *discardWriter) Flush() {}
