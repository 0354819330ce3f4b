package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// This file is the request pipeline, in the contract's order: method,
// Content-Length, body, authentication, payload, replay gate, rewrite, next
// (forward.go), each step with one reason to fail and one reason code.

// drainGrace is how long the connection may still be read after a 405,
// 408 or 413 answer (net/http drains the unread body before closing).
const drainGrace = 500 * time.Millisecond

// ServeHTTP runs the checks in contract order and passes verified requests
// on: method, Content-Length, body, authentication, payload, replay gate,
// request rewrite, next. The body buffer goes back to its pool only after
// next, and so the upstream round trip, is done with it. A redelivery,
// marked by the reready app's worker, skips the checks (redeliver).
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if rd := redeliveryFrom(r.Context()); rd != nil && rd.take() {
		return h.redeliver(w, r, next, rd)
	}
	start := time.Now()
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return h.reject(w, r, start, nil, fail(ReasonMethod, "method %s is not allowed; only POST", clip(r.Method)))
	}
	if r.ContentLength > h.MaxBody {
		return h.reject(w, r, start, nil, fail(ReasonBodyTooLarge, "Content-Length %d exceeds max_body %d", r.ContentLength, h.MaxBody))
	}
	ref, f := h.readBody(w, r, start)
	if f != nil {
		return h.reject(w, r, start, nil, f)
	}
	st := &requestState{body: newBodyReader(ref)}
	defer st.release(r)
	body := st.body.buf

	f = h.authenticate(r, body, &st.auth)
	if f == nil {
		var err error
		if st.event, err = verify.ParsePayloadInto(body, st.strs[:0]); err != nil {
			f = err.(*Failure)
		}
	}
	if f != nil {
		if !h.observe {
			if st.auth.signed {
				st.id = signedDeliveryID(st.auth.sig.TS, &st.auth.sig.MAC)
			}
			return h.reject(w, r, start, st, f)
		}
		h.logReject(r, f, statusFor(f.Reason), true)
		h.metrics.observe(outcomeObserved, string(f.Reason), time.Since(start))
		st.auth = auth{verified: "none", reason: f.Reason, query: st.auth.query, stripQuery: st.auth.stripQuery}
		st.event = verify.Event{}
		h.forwardable(r, st)
		st.status.ResponseWriter = w
		defer func() { h.journalLive(r, st, start, OutcomeObserved, f.Reason, st.answered(), st.upstreamStatus()) }()
		st.nextErr = next.ServeHTTP(&st.status, r)
		return st.nextErr
	}
	if st.auth.signed {
		st.id = signedDeliveryID(st.auth.sig.TS, &st.auth.sig.MAC)
	} else {
		st.id = randomDeliveryID(start.Unix())
	}
	if !verify.KnownState(st.event.State) {
		h.logger.Warn("forwarding unknown state", zap.String("state", clip(st.event.State)),
			zap.String("device_return_id", clip(st.event.DeviceReturnID)))
	}

	if h.replay != nil && st.auth.signed {
		done, err := h.replayGate(w, r, start, st)
		if done {
			return err
		}
		defer st.settle(h)
	}

	h.forwardable(r, st)
	h.metrics.observe(outcomeVerified, "", time.Since(start))
	h.metrics.event(st.event.State, st.event.Test)
	if st.claimed {
		stop := h.renewClaim(st)
		defer stop()
	}
	if h.Queue != nil {
		return h.forwardOrQueue(w, r, next, st, start)
	}
	return h.forward(w, r, next, st, start)
}

// release returns the body buffer to its pool. When the rest of the chain
// failed (an upstream down: 502), Caddy's handle_errors routes run after
// this handler returns and may proxy the request again (to a fallback):
// the body is then rewound and kept until the request is over.
func (st *requestState) release(r *http.Request) {
	if st.nextErr == nil {
		st.body.detach()
		return
	}
	st.body.rewind()
	context.AfterFunc(r.Context(), st.body.detach)
}

// requestState is everything the handler keeps for one request, in one
// allocation.
type requestState struct {
	body   bodyReader
	auth   auth
	event  verify.Event
	status statusWriter
	hdrs   [12]string // backing store of the header values set upstream
	strs   [320]byte  // the event's strings, when they fit

	claim        replayClaim
	claimed      bool
	nextReturned bool  // next returned (did not panic)
	nextErr      error // what it returned

	id         deliveryID
	idText     string      // id.String(), once needed, in idBuf
	idBuf      [48]byte    // "<t>-<32 hex>": t has at most 10 digits (a longer id would be copied, not cut)
	queued     bool        // stored for redelivery and answered 202
	resentDead bool        // a resend of a dead queued delivery, reopened by the replay gate
	redelivery *redelivery // set when this is a redelivery
}

// delivered reports whether the app took the event: it answered 2xx (even
// if copying the answer to the sender failed afterwards and next panicked
// with http.ErrAbortHandler), or next returned no error and wrote nothing,
// which net/http answers 200.
func (st *requestState) delivered() bool {
	code := st.status.code
	return code >= 200 && code < 300 || code == 0 && st.nextReturned && st.nextErr == nil
}

// renewClaim keeps a claim in a lapsing store (storage) alive while next
// runs; the returned func stops it.
func (h *Handler) renewClaim(st *requestState) (stop func()) {
	rn, ok := h.replay.(interface {
		Renew(context.Context, replayClaim, time.Time) error
	})
	if !ok {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(DefaultReplayLease / 3)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-tick.C:
				if err := rn.Renew(context.Background(), st.claim, h.now()); err != nil {
					h.logger.Warn("replay store failed to renew a claim; a repeat may be forwarded after it lapses", zap.Error(err))
				}
			}
		}
	}()
	return func() { close(done) }
}

// replayGate decides a signature-verified request: a repeat of a delivered
// one is answered 200 without forwarding, a repeat of one in flight gets
// 409, a new one is claimed. done reports that the request was answered.
func (h *Handler) replayGate(w http.ResponseWriter, r *http.Request, start time.Time, st *requestState) (done bool, err error) {
	state, claim, err := h.replay.Begin(r.Context(), st.id, h.now())
	if err == nil && state == replayDelivered && h.Queue != nil {
		// A queued delivery counts as delivered, but one given up on
		// (dead) is not: its resend is a fresh chance.
		dead, derr := h.app.queue.isDead(r.Context(), st.deliveryID())
		if derr != nil {
			h.logger.Error("queue: cannot tell whether a repeated delivery is a dead queued one; refusing with 503",
				zap.String("delivery_id", st.deliveryID()), zap.Error(derr))
			w.Header().Set("Retry-After", "10")
			h.journalLive(r, st, start, OutcomeRejected, ReasonQueueUnavailable, http.StatusServiceUnavailable, 0)
			return true, caddyhttp.Error(http.StatusServiceUnavailable, fmt.Errorf("reready_verify: %s: %v", ReasonQueueUnavailable, derr))
		}
		if dead {
			state, claim, err = h.replay.Reopen(r.Context(), st.id, h.now())
			st.resentDead = true
		}
	}
	switch {
	case err != nil:
		// Refused so that the sender retries; logged once, at error level.
		w.Header().Set("Retry-After", "10")
		return true, h.reject(w, r, start, st, fail(ReasonReplayUnavailable, "replay store unavailable: %v", err))
	case state == replayInFlight:
		return true, h.reject(w, r, start, st, fail(ReasonReplayInFlight, "this delivery is being forwarded now"))
	case state == replayDelivered:
		f := &Failure{Reason: ReasonReplayDelivered, Msg: "already delivered; acknowledged without forwarding"}
		h.logReject(r, f, statusFor(f.Reason), false)
		h.metrics.observe(outcomeReplayed, string(f.Reason), time.Since(start))
		h.journalLive(r, st, start, OutcomeReplayed, f.Reason, statusFor(f.Reason), 0)
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		w.WriteHeader(statusFor(f.Reason))
		_, err := io.WriteString(w, "already delivered\n")
		return true, err
	}
	st.claim, st.claimed = claim, true
	return false, nil
}

// settle records a claimed delivery once next has returned: delivered if
// the upstream answered 2xx, otherwise forgotten so a retry goes through.
// It runs deferred, so a panic in next releases the claim too.
func (st *requestState) settle(h *Handler) {
	if !st.claimed {
		return
	}
	ctx := context.Background() // the client may be gone; the record must not be
	if st.queued || st.delivered() {
		if err := h.replay.Commit(ctx, st.claim, h.now(), h.replayTTL(st.auth.sig.TS)); err != nil {
			h.logger.Error("replay store failed to record a delivery; a repeat may be forwarded", zap.Error(err))
		}
		return
	}
	if err := h.replay.Abort(ctx, st.claim); err != nil {
		h.logger.Warn("replay store failed to release a claim; it expires by itself", zap.Error(err))
	}
}

// replayTTL is how long a delivery is remembered: 2 x tolerance, and at
// least until its t can no longer pass the timestamp check (a t up to
// tolerance ahead is accepted, counted in whole seconds).
func (h *Handler) replayTTL(ts int64) time.Duration {
	ttl := 2 * time.Duration(h.Tolerance)
	tol := int64(time.Duration(h.Tolerance) / time.Second)
	if untilStale := time.Unix(ts+tol+1, 0).Sub(h.now()); untilStale > ttl {
		ttl = untilStale
	}
	return ttl
}

// readBody reads the body under max_body and body_timeout, which runs
// from start (the handler's entry).
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request, start time.Time) (*[]byte, *Failure) {
	timeout := time.Duration(h.BodyTimeout)
	viaDeadline := setReadDeadline(w, start.Add(timeout)) == nil
	var timer *time.Timer
	if !viaDeadline {
		// No connection deadline (e.g. HTTP/3): closing the body ends a
		// blocked read.
		timer = time.AfterFunc(timeout, func() { r.Body.Close() })
	}
	body, err := readBody(r.Body, r.ContentLength, h.MaxBody)
	if viaDeadline {
		// Clear it, or the connection's background read would time out
		// later and cancel the request while the upstream works.
		_ = setReadDeadline(w, time.Time{})
	} else {
		timer.Stop()
	}
	switch {
	case err == nil:
		return body, nil
	case errors.Is(err, errTooLarge), isMaxBytes(err):
		return nil, fail(ReasonBodyTooLarge, "body exceeds max_body %d", h.MaxBody)
	case isTimeout(err) || !viaDeadline && time.Since(start) >= timeout:
		return nil, fail(ReasonBodyTimeout, "body not read within body_timeout %s", timeout)
	}
	return nil, fail(ReasonBodyRead, "reading body: %v", err)
}

// setReadDeadline is http.ResponseController.SetReadDeadline without its
// allocation: it unwraps Caddy's response writer wrappers the same way.
func setReadDeadline(w http.ResponseWriter, d time.Time) error {
	for {
		switch t := w.(type) {
		case interface{ SetReadDeadline(time.Time) error }:
			return t.SetReadDeadline(d)
		case interface{ Unwrap() http.ResponseWriter }:
			w = t.Unwrap()
		default:
			return http.ErrNotSupported
		}
	}
}

// isMaxBytes spots a request_body limit hit earlier in the chain.
func isMaxBytes(err error) bool {
	var m *http.MaxBytesError
	return errors.As(err, &m)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// auth is what authentication established.
type auth struct {
	signed     bool
	sig        verify.Result // the signature that matched: with T, its MAC is the replay key
	verified   string        // hmac, token, hmac,token; none in observe mode
	reason     Reason        // why an observed request failed
	query      string        // the query without ?token=
	stripQuery bool
}

// authenticate runs the configured checks; every one must pass. The
// signature is checked first, so its failure is the one reported when
// both fail. The token-less query is computed even when a check fails,
// so observe mode never forwards the token either.
func (h *Handler) authenticate(r *http.Request, body []byte, a *auth) *Failure {
	v := h.verifier
	var tokenErr error
	if v.ChecksToken() {
		a.query, tokenErr = v.CheckToken(r.URL.RawQuery)
		a.stripQuery = true
	}
	if v.ChecksSignature() {
		if f := h.checkSignature(r, body, a); f != nil {
			return f
		}
	}
	if tokenErr != nil {
		return tokenErr.(*Failure)
	}
	switch {
	case a.signed && v.ChecksToken():
		a.verified = "hmac,token"
	case a.signed:
		a.verified = "hmac"
	default:
		a.verified = "token"
	}
	return nil
}

func (h *Handler) checkSignature(r *http.Request, body []byte, a *auth) *Failure {
	vals := r.Header[hdrSignature]
	switch {
	case len(vals) == 0:
		return fail(ReasonSignatureMissing, "no %s header", verify.SignatureHeader)
	case len(vals) > 1:
		return fail(ReasonSignatureDuplicate, "%d %s headers", len(vals), verify.SignatureHeader)
	}
	if err := h.verifier.Verify(vals[0], body, h.now(), &a.sig); err != nil {
		return err.(*Failure)
	}
	a.signed = true
	return nil
}

// setQuery replaces the request's query in both URL and RequestURI.
func setQuery(r *http.Request, q string) {
	r.URL.RawQuery = q
	r.URL.ForceQuery = false
	if r.RequestURI != "" {
		path, _, _ := strings.Cut(r.RequestURI, "?")
		if q != "" {
			path += "?" + q
		}
		r.RequestURI = path
	}
}

// reject logs and counts a rejection once and returns it as a handler
// error, so handle_errors can render it.
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, start time.Time, st *requestState, f *Failure) error {
	status := statusFor(f.Reason)
	switch status {
	case http.StatusMethodNotAllowed, http.StatusRequestTimeout, http.StatusRequestEntityTooLarge:
		w.Header().Set("Connection", "close")
		// After the handler returns, net/http reads up to 256 KiB of an
		// unread body before it closes the connection, with no deadline
		// but Caddy's read_idle_timeout (1m by default). Bound that drain,
		// so a client that declares a body and withholds it cannot hold the
		// connection; one that sends it at once still gets a clean close.
		_ = setReadDeadline(w, time.Now().Add(drainGrace))
	}
	h.logReject(r, f, status, false)
	h.metrics.observe(outcomeRejected, string(f.Reason), time.Since(start))
	h.journalLive(r, st, start, OutcomeRejected, f.Reason, status, 0)
	return caddyhttp.Error(status, fmt.Errorf("reready_verify: %w", f))
}

// logReject writes the one log line of a request that failed a check. It
// never logs the query (which may hold the token) or any header value.
func (h *Handler) logReject(r *http.Request, f *Failure, status int, observed bool) {
	msg, level := "rejected webhook", zapcore.InfoLevel
	switch {
	case observed:
		msg = "observed webhook that would be rejected; forwarding it (mode observe)"
	case f.Reason == ReasonReplayDelivered:
		msg = "replayed webhook acknowledged without forwarding"
	case f.Reason == ReasonReplayUnavailable:
		msg, level = "replay store failed; refusing the delivery so that the sender retries", zapcore.ErrorLevel
	}
	c := h.logger.Check(level, msg)
	if c == nil {
		return
	}
	clientIP, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	c.Write(
		zap.String("reason", string(f.Reason)),
		zap.Int("status", status),
		zap.String("detail", f.Msg),
		zap.String("remote_addr", r.RemoteAddr),
		zap.String("client_ip", clientIP),
		zap.String("method", clip(r.Method)),
		zap.String("path", r.URL.Path),
	)
}
