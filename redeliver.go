package rereadyverify

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// This file is one redelivery: how a queued delivery is sent through the
// same route as the live request, as the configuration is now, and what
// counts as done (when it is tried next is the worker's: worker.go). It
// re-enters the site's Caddy server in process with the request as it
// arrived (host, URI without the token,
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

// redeliveriesServing counts the attempts being served (srv.ServeHTTP in
// attempt). A marked request exists only while its attempt is served, so
// while the count is 0, which is nearly always, redeliveryFrom skips the
// walk up every live request's context chain.
var redeliveriesServing atomic.Int64

func redeliveryFrom(ctx context.Context) *redelivery {
	if redeliveriesServing.Load() == 0 {
		return nil
	}
	rd, _ := ctx.Value(redeliveryKey{}).(*redelivery)
	return rd
}

// redeliveryAttemptTimeout bounds one attempt.
const redeliveryAttemptTimeout = 2 * time.Minute

// attemptResult is what one attempt came to.
type attemptResult struct {
	delivered  bool
	status     int    // the app's answer, or Caddy's error status
	upstream   int    // the app's answer; 0 when none
	retryAfter string // the app's Retry-After
	reason     Reason // why it failed
	errText    string // what failed, for the item's last_error
	refused    bool   // retrying cannot change it: a 4xx other than 408 and 429
	probe      bool   // the one attempt of a route whose app is failing
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
				errText: verify.Clip(fmt.Sprintf("the route panicked: %v", p), 300)}
			if code >= 200 && code < 300 {
				res = attemptResult{delivered: true, status: code, upstream: code}
			}
		}
		res.duration = time.Since(start)
	}()
	srv := a.route(it.Server, it.Port)
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
	redeliveriesServing.Add(1)
	defer redeliveriesServing.Add(-1) // before the recover above: a panic passes through
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

func (sealedBody) Close() error { return nil }

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

// redeliver is the handler's side of a redelivery: the request carries a
// marker of an unexported type, set by the reready app's worker, instead
// of a checkable signature. It passes the stored delivery on with its
// trusted headers and reports what the rest of the route answered.
func (h *Handler) redeliver(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler, rd *redelivery) error {
	it := rd.item
	ref := getBuf(len(it.Body))
	*ref = append(*ref, it.Body...)
	st := &requestState{body: newBodyReader(ref), redelivery: rd}
	defer st.release(r)
	ev, err := verify.ParsePayloadInto(st.body.buf, st.strs[:0])
	if err != nil {
		rd.report(0, caddyhttp.Error(http.StatusInternalServerError, fmt.Errorf("stored delivery %s: %w", it.ID, err)))
		return nil
	}
	st.event = ev
	st.auth = auth{verified: it.Verified, signed: it.Timestamp != ""}
	st.auth.sig.T = it.Timestamp
	st.id, _ = parseDeliveryID(it.ID)
	h.forwardable(r, st)
	st.status.ResponseWriter = w
	defer func() {
		if p := recover(); p != nil {
			rd.mu.Lock()
			rd.status = st.status.code // what the app answered before the panic
			rd.mu.Unlock()
			panic(p)
		}
	}()
	err = next.ServeHTTP(&st.status, r)
	rd.report(st.status.code, err)
	// The worker records a failure and tries again later: no handle_errors
	// route (a fallback would get a duplicate) and no error log per attempt.
	return nil
}

// report records what the rest of the route did with a redelivery.
func (rd *redelivery) report(status int, err error) {
	rd.mu.Lock()
	rd.returned, rd.status, rd.err = true, status, err
	rd.mu.Unlock()
}
