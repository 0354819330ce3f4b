package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
)

// This file is the last step of the pipeline: passing a verified delivery
// on to the rest of the route, and, with `queue` on, taking over when the
// app fails (storing the delivery and answering 202) or when earlier
// deliveries of the same return are still queued. The handler's side of a
// redelivery is in redeliver.go, the journal records of live requests in
// journal.go.

// forward passes a verified request on and journals what it was answered.
func (h *Handler) forward(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, st *requestState, start time.Time) error {
	st.status.ResponseWriter = w
	defer func() { h.journalLive(r, st, start, OutcomeForwarded, "", st.answered(), st.upstreamStatus()) }()
	h.warnIfPaused(r, start) // without `queue` a paused path is forwarded, with a warning
	err := next.ServeHTTP(&st.status, r)
	st.nextReturned, st.nextErr = true, err
	return err
}

// forwardOrQueue is forward with the queue on: a delivery whose return has
// queued deliveries waits behind them; one the app fails (an error from
// next of status 5xx, 408 or 429, such as 502 for an app that is down, or
// such an answer) is stored and answered 202. Any other answer or error is
// passed on. A delivery to a paused path (pause.go) is queued as it
// arrives (reason held rather than paused when its return has queued
// deliveries anyway). When the storage cannot say whether the return has
// queued deliveries or the path is paused, the sender gets 503:
// forwarding could overtake one or break the pause.
func (h *Handler) forwardOrQueue(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, st *requestState, start time.Time) error {
	held, err := h.app.queue.held(r.Context(), st.event.DeviceReturnID)
	paused := false
	if err == nil && !held {
		paused, err = h.app.pausedLive(r.Context(), originalPath(r))
	}
	if err != nil {
		msg := "queue: cannot tell whether this return has queued deliveries; refusing with 503 so that its order is kept"
		if errors.Is(err, errPauseUnreadable) {
			msg = "queue: cannot tell whether this delivery's path is paused; refusing with 503 so that the pause holds"
		}
		h.logger.Error(msg, zap.String("delivery_id", st.deliveryID()), zap.Error(err))
		w.Header().Set("Retry-After", "10")
		h.journalLive(r, st, start, OutcomeRejected, ReasonQueueUnavailable, http.StatusServiceUnavailable, 0)
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("reready_verify: %s: %v", ReasonQueueUnavailable, err))
	}
	if held {
		return h.enqueue(w, r, st, start, ReasonHeld, 0, "", nil)
	}
	if paused {
		return h.enqueue(w, r, st, start, ReasonPaused, 0, "", nil)
	}

	qw := new(queueWriter) // not in st: a request with the queue off needs no room for it
	qw.reset(w, &st.status.code)
	err = h.nextQueued(qw, r, next, st, start)
	st.nextReturned, st.nextErr = true, err
	if !qw.swallowed && (err == nil || qw.passed || !queueable(statusOf(err))) {
		reason := Reason("")
		if qw.code >= 200 && qw.code < 300 || qw.code == 0 && err == nil {
			h.app.kick(originalPath(r))
			if h.resolveDead(r, st) {
				reason = ReasonResentDead
			}
		}
		h.journalLive(r, st, start, OutcomeForwarded, reason, st.answered(), st.upstreamStatus())
		return err
	}
	failure, upstream := err, 0
	if qw.swallowed {
		upstream = qw.code
		failure = caddyhttp.Error(qw.code, fmt.Errorf("reready_verify: the app answered %d", qw.code))
	}
	h.app.failed(originalPath(r), h.now(), qw.retryAfter)
	return h.enqueue(w, r, st, start, ReasonUpstreamFailed, upstream, qw.retryAfter, failure)
}

// resolveDead removes the dead item of a delivery the app just took live:
// a resend of a delivery given up on, which the replay gate reopened. (With
// replay suppression off no gate tells of one, and no storage read per
// delivery is spent looking: such a dead item stays listed until dropped.)
// It reports whether there was one.
func (h *Handler) resolveDead(r *http.Request, st *requestState) bool {
	if !st.resentDead {
		return false
	}
	id := st.deliveryID()
	resolved, err := h.app.queue.resolve(context.WithoutCancel(r.Context()), id)
	if err != nil {
		h.logger.Error("queue: removing a dead delivery that a resend delivered failed; drop it by hand", zap.String("delivery_id", id), zap.Error(err))
		return false
	}
	if resolved {
		h.logger.Info("a resend of a dead delivery was delivered; the dead item is removed", zap.String("delivery_id", id))
		h.app.changed(id)
	}
	return resolved
}

// nextQueued runs next through qw. reverse_proxy aborts the response
// (panics with http.ErrAbortHandler) when the app's answer breaks off while
// it is copied: for an answer qw swallowed, that is the app failing, taken
// as its answer; any other panic goes on, journaled first (the status the
// app answered is in st already, so the replay gate still sees a 2xx).
func (h *Handler) nextQueued(qw *queueWriter, r *http.Request, next caddyhttp.Handler, st *requestState, start time.Time) (err error) {
	defer func() {
		if p := recover(); p != nil {
			if p == http.ErrAbortHandler && qw.swallowed {
				err = nil
				return
			}
			h.journalLive(r, st, start, OutcomeForwarded, "", qw.code, qw.code)
			panic(p)
		}
	}()
	return next.ServeHTTP(qw, r)
}

// enqueue stores the delivery and answers 202 once the storage reported it
// stored. If storing fails the sender gets failure (the app's failure, or
// 503 for a held delivery); at max_items, 503 with Retry-After.
func (h *Handler) enqueue(w http.ResponseWriter, r *http.Request, st *requestState, start time.Time, reason Reason, upstream int, retryAfterValue string, failure error) error {
	now := h.now()
	// apply records what the live attempt came to: in a new item, or in
	// the dead one a resend makes pending again.
	apply := func(it *queueItem) {
		if reason != ReasonUpstreamFailed {
			it.NextAttemptAt = &now // due as soon as it is first in its line
			return
		}
		it.Attempts++
		it.LastAttemptAt, it.LastUpstream, it.LastError = &start, upstream, ""
		it.LastStatus = upstream // what the sender would have had without the queue
		if it.LastStatus == 0 {
			it.LastStatus = http.StatusBadGateway
			if failure != nil {
				it.LastStatus = statusOf(failure)
			}
		}
		if upstream != 0 {
			it.LastError = fmt.Sprintf("the app answered %d", upstream)
		} else if failure != nil {
			it.LastError = clipError(failure)
		}
		next := nextAttempt(it, it.Attempts, now, retryAfterValue)
		it.NextAttemptAt = &next
	}
	it := h.newItem(r, st, now)
	apply(it)
	failStatus := http.StatusServiceUnavailable
	if failure != nil {
		failStatus = statusOf(failure)
	}

	// The sender may be gone; the verified event must still be stored.
	what, err := h.app.queue.enqueue(context.WithoutCancel(r.Context()), it, h.Queue.MaxItems, now, apply)
	switch {
	case errors.Is(err, errQueueFull):
		w.Header().Set("Retry-After", "60")
		f := fail(ReasonQueueFull, "max_items %d reached; refusing the delivery with 503", h.Queue.MaxItems)
		h.logger.Error("queue full; refusing a failed delivery with 503", zap.Int("max_items", h.Queue.MaxItems),
			zap.String("delivery_id", it.ID))
		h.journalLive(r, st, start, OutcomeRejected, ReasonQueueFull, http.StatusServiceUnavailable, upstream)
		return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("reready_verify: %w", f))
	case err != nil:
		h.logger.Error("queue: storing a delivery failed; the sender gets the failure", zap.String("delivery_id", it.ID), zap.Error(err))
		h.journalLive(r, st, start, OutcomeForwarded, ReasonQueueUnavailable, failStatus, upstream)
		if failure == nil {
			w.Header().Set("Retry-After", "10")
			return caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("reready_verify: %s: %v", ReasonQueueUnavailable, err))
		}
		return failure
	}

	st.queued, st.nextErr = true, nil // the chain's failure is handled
	h.app.queued()
	if what == enqueuedRevived {
		reason = ReasonResentDead
		h.logger.Info("a resend of a dead delivery is queued again", zap.String("delivery_id", it.ID))
		h.app.changed(it.ID)
	}
	hdr := w.Header()
	hdr.Set("Content-Type", "text/plain; charset=utf-8")
	hdr.Set(hdrDeliveryID, it.ID)
	w.WriteHeader(http.StatusAccepted)
	_, err = io.WriteString(w, "queued for redelivery\n")
	_ = http.NewResponseController(w).Flush()
	// Event handlers run synchronously: after the answer, not before it.
	h.app.recordItem(it, OutcomeQueued, reason, attemptResult{status: http.StatusAccepted, upstream: upstream, duration: time.Since(start)})
	return err
}

// newItem makes a queue item of a verified request that forwardable has
// rewritten: its X-ReReady-* headers are ours, which the item leaves out
// (the redelivery sets them afresh). Its URI is the one the client sent,
// without the token: the redelivery re-enters the server with it, so the
// route's matchers and rewrites (handle_path, uri strip_prefix) take it
// the same way again.
func (h *Handler) newItem(r *http.Request, st *requestState, now time.Time) *queueItem {
	hdr := make(http.Header, len(r.Header))
	for k, v := range r.Header {
		switch {
		case k == hdrSignature:
		case isReReadyHeader(k), k == "Content-Length", k == "Connection", k == "Transfer-Encoding",
			k == "Expect", k == "Trailer", k == "Te", k == "Upgrade", k == "Keep-Alive":
			continue
		}
		hdr[k] = v
	}
	uri := originalURI(r)
	if st.auth.stripQuery {
		if path, query, ok := strings.Cut(uri, "?"); ok {
			query, _ = h.verifier.CheckToken(query) // the query without the token, whatever the check said
			uri = path
			if query != "" {
				uri += "?" + query
			}
		}
	}
	it := &queueItem{
		ID:             st.id.String(),
		Status:         ItemPending,
		DeviceReturnID: st.event.DeviceReturnID,
		State:          st.event.State,
		Test:           st.event.Test,
		ReceivedAt:     now.UTC(),
		MaxAge:         int64(h.Queue.MaxAge),

		TLS:        r.TLS != nil,
		Host:       r.Host,
		URI:        uri,
		RemoteAddr: r.RemoteAddr,
		Header:     hdr,
		Verified:   st.auth.verified,
		Key:        st.auth.keyNumber(),
		Body:       st.body.buf, // marshalled before the buffer is released
	}
	it.Server, it.Port = h.app.serverOf(r)
	if st.auth.signed {
		it.Timestamp = st.auth.sig.T
	}
	return it
}

// originalURI is the request's URI as the client sent it, before any
// rewrite earlier in the route (handle_path, uri and rewrite change
// r.RequestURI; Caddy keeps the original in the request's context): a
// redelivery enters the route from its start again. newItem removes the
// token from it.
func originalURI(r *http.Request) string {
	if orig, ok := r.Context().Value(caddyhttp.OriginalRequestCtxKey).(http.Request); ok && orig.RequestURI != "" {
		return orig.RequestURI
	}
	if r.RequestURI != "" {
		return r.RequestURI
	}
	return r.URL.RequestURI()
}

// originalPath is originalURI's path, which names a route for kicks.
func originalPath(r *http.Request) string {
	p, _, _ := strings.Cut(originalURI(r), "?")
	return p
}

// statusOf is the status Caddy answers for a handler error.
func statusOf(err error) int {
	var he caddyhttp.HandlerError
	if errors.As(err, &he) && he.StatusCode != 0 {
		return he.StatusCode
	}
	return http.StatusInternalServerError
}

// answered is the status the sender got from the rest of the chain.
func (st *requestState) answered() int {
	if st.nextErr != nil {
		return statusOf(st.nextErr)
	}
	if st.status.code == 0 {
		return http.StatusOK // nothing written: net/http answers 200
	}
	return st.status.code
}

// upstreamStatus is what the rest of the chain answered; 0 when it failed
// without an answer.
func (st *requestState) upstreamStatus() int {
	if st.nextErr != nil && st.status.code == 0 {
		return 0
	}
	return st.answered()
}

// queueWriter is the response writer of a live delivery with the queue on.
// A 5xx, 408 or 429 answer is swallowed, headers and body, so the handler
// can store the delivery and answer 202 instead; any other answer passes
// through. Headers go straight into the response's map (the usual answer
// passes, and costs no copy); the entries it held before are remembered,
// and a swallowed answer's headers are taken out again.
type queueWriter struct {
	w          http.ResponseWriter
	code       int
	status     *int // the request state's record of it, for the replay gate
	swallowed  bool // a queueable answer was kept from the sender
	passed     bool // the answer went to the sender
	retryAfter string
	before     [4]headerEntry // the response's headers before next ran
	nBefore    int
	moreBefore http.Header // beyond four
}

type headerEntry struct {
	key    string
	values []string
}

func (q *queueWriter) reset(w http.ResponseWriter, status *int) {
	*q = queueWriter{w: w, status: status}
	for k, v := range w.Header() {
		if q.nBefore < len(q.before) {
			q.before[q.nBefore] = headerEntry{k, v[:len(v):len(v)]}
			q.nBefore++
			continue
		}
		if q.moreBefore == nil {
			q.moreBefore = http.Header{}
		}
		q.moreBefore[k] = v[:len(v):len(v)]
	}
}

func (q *queueWriter) Header() http.Header { return q.w.Header() }

func (q *queueWriter) WriteHeader(code int) {
	if code < 200 || q.swallowed || q.passed {
		return // interim answers are not relayed; a second status is ignored
	}
	q.code = code
	if q.status != nil {
		*q.status = code
	}
	if !queueable(code) {
		q.passed = true
		q.w.WriteHeader(code)
		return
	}
	q.swallowed = true
	hdr := q.w.Header()
	q.retryAfter = hdr.Get("Retry-After")
	clear(hdr)
	for _, e := range q.before[:q.nBefore] {
		hdr[e.key] = e.values
	}
	maps.Copy(hdr, q.moreBefore)
}

func (q *queueWriter) Write(p []byte) (int, error) {
	if !q.swallowed && !q.passed {
		q.WriteHeader(http.StatusOK)
	}
	if q.swallowed {
		return len(p), nil
	}
	return q.w.Write(p)
}

// ReadFrom keeps reverse_proxy's copy going through Write's decision.
func (q *queueWriter) ReadFrom(src io.Reader) (int64, error) {
	if q.passed {
		if rf, ok := q.w.(io.ReaderFrom); ok {
			return rf.ReadFrom(src)
		}
	}
	return io.Copy(writerOnly{q}, src)
}

// FlushError flushes only an answer that passes through: a flush before
// the status would commit a 200.
func (q *queueWriter) FlushError() error {
	if !q.passed {
		return nil
	}
	return http.NewResponseController(q.w).Flush()
}

// Unwrap lets http.ResponseController reach deadlines on the connection.
func (q *queueWriter) Unwrap() http.ResponseWriter { return q.w }

// writerOnly hides ReadFrom, so io.Copy uses Write.
type writerOnly struct{ io.Writer }

// statusWriter records the final status the rest of the chain wrote.
type statusWriter struct {
	caddyhttp.ResponseWriterWrapper
	code int
}

func (sw *statusWriter) WriteHeader(code int) {
	if code >= 200 && sw.code == 0 {
		sw.code = code
	}
	sw.ResponseWriterWrapper.WriteHeader(code)
}

func (sw *statusWriter) Write(p []byte) (int, error) {
	if sw.code == 0 {
		sw.code = http.StatusOK
	}
	return sw.ResponseWriterWrapper.Write(p)
}
