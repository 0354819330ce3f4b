// Package rereadyverify is a Caddy HTTP handler that verifies ReReady
// webhooks (HMAC-SHA512 signatures and/or a ?token= parameter) before they
// reach the app behind it.
package rereadyverify

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

func init() {
	caddy.RegisterModule(Handler{})
}

// Defaults.
const (
	DefaultTolerance   = 5 * time.Minute
	DefaultMaxBody     = 64 << 10
	DefaultBodyTimeout = 10 * time.Second
)

// drainGrace is how long the connection may still be read after a 405,
// 408 or 413 answer (net/http drains the unread body before closing).
const drainGrace = 500 * time.Millisecond

// Handler verifies ReReady webhook deliveries and passes verified ones on
// with their parsed state as trusted headers and placeholders.
//
// Checks, in order: the method must be POST (405, with `Allow: POST`); a
// declared Content-Length over max_body is refused before reading (413);
// the body is read within body_timeout (408) and max_body (413); the
// signature and/or token must verify (401); the payload must be a ReReady
// JSON object (400); a repeat of a signature-verified delivery is answered
// 200 without forwarding once delivered, 409 while in flight (replay
// suppression). 405, 408 and 413 answers close the connection, within
// half a second even if the client withholds its body. In observe
// mode, what would get 401 or 400 is forwarded marked X-ReReady-Verified:
// none with X-ReReady-Reject-Reason.
// Rejections are returned as handler errors, so `handle_errors` can render
// them; the error message starts with a stable reason code.
//
// A verified request goes on with its exact body (Content-Length set,
// Transfer-Encoding and Expect removed), the ?token= parameter removed from
// its URI, every incoming X-ReReady-* header except X-ReReady-Signature-512
// removed, and these set: X-ReReady-State, X-ReReady-Device-Return-Id,
// X-ReReady-Serial-Number (absent when null), X-ReReady-Test (true/false),
// X-ReReady-Ticket-Url (absent when null), X-ReReady-Url (absent when null),
// X-ReReady-Timestamp (the verified t; absent when no signature was
// checked) and X-ReReady-Verified (hmac, token or hmac,token).
//
// Placeholder                       | Value
// ----------------------------------|------------------------------------
// `{http.reready.state}`            | the event's state
// `{http.reready.device_return_id}` | the device return's id
// `{http.reready.serial_number}`    | serial number, empty when null
// `{http.reready.test}`             | `true` for test events, else `false`
// `{http.reready.ticket_url}`       | ticket URL, empty when null
// `{http.reready.url}`              | the device return's URL, empty when null
// `{http.reready.timestamp}`        | the verified t, empty without signature
// `{http.reready.verified}`         | `hmac`, `token`, `hmac,token`; `none` when observed
// `{http.reready.reject_reason}`    | observe mode: why it would be rejected
type Handler struct {
	// Signing secret keys ("ssk_..."). A request must carry a valid
	// signature under any one of them. Placeholders such as {env.NAME} and
	// {file./path} are expanded at provision time; an empty result is an
	// error. The HMAC key is the secret's exact bytes, ssk_ included.
	Secrets []string `json:"secrets,omitempty"`

	// If set, every request must carry ?token=<Token>. With secrets too,
	// both checks must pass. Placeholders are expanded as for secrets.
	Token string `json:"token,omitempty"`

	// Largest accepted distance between now and the signed timestamp t,
	// counted in whole seconds. Default: 5m.
	Tolerance caddy.Duration `json:"tolerance,omitempty"`

	// Largest accepted body in bytes. Default: 65536 (64 KiB).
	MaxBody int64 `json:"max_body,omitempty"`

	// Longest time allowed to read the body. Default: 10s.
	BodyTimeout caddy.Duration `json:"body_timeout,omitempty"`

	// Replay suppression for signature-verified requests: "memory" (this
	// process, kept across config reloads), "storage" (Caddy's configured
	// storage, shared by a fleet) or "off". A repeat of a delivery whose
	// upstream answered 2xx, within 2 x tolerance, is answered 200 without
	// forwarding; a repeat while the first is in flight gets 409.
	// Default: memory.
	Replay string `json:"replay,omitempty"`

	// "enforce" rejects what fails a check; "observe" forwards requests
	// that would get 401 or 400, marked with X-ReReady-Verified: none and
	// X-ReReady-Reject-Reason, for rolling the gateway out. Default:
	// enforce.
	Mode string `json:"mode,omitempty"`

	// Store-and-forward: when set (an empty object takes the defaults), a
	// verified delivery that the rest of the route fails (an error such as
	// 502/504, or a 5xx, 408 or 429 answer) is stored in Caddy's storage
	// and answered 202, then redelivered through the same route until the
	// app answers 2xx. A delivery whose device return has queued
	// deliveries waits behind them. Default: off.
	Queue *QueueConfig `json:"queue,omitempty"`

	app           *App
	verifier      *Verifier
	replay        replayStore
	releaseReplay func() error
	metrics       *metrics
	observe       bool
	logger        *zap.Logger
	now           func() time.Time
}

// Replay and mode values.
const (
	ReplayMemory  = "memory"
	ReplayStorage = "storage"
	ReplayOff     = "off"
	ModeEnforce   = "enforce"
	ModeObserve   = "observe"
)

// CaddyModule returns the Caddy module information.
func (Handler) CaddyModule() caddy.ModuleInfo {
	return caddy.ModuleInfo{
		ID:  "http.handlers.reready_verify",
		New: func() caddy.Module { return new(Handler) },
	}
}

// Provision fills in defaults, expands placeholders in secrets and token
// and builds the verifier.
func (h *Handler) Provision(ctx caddy.Context) error {
	h.logger = ctx.Logger()
	if h.now == nil {
		h.now = time.Now
	}
	if h.Tolerance == 0 {
		h.Tolerance = caddy.Duration(DefaultTolerance)
	}
	if h.MaxBody == 0 {
		h.MaxBody = DefaultMaxBody
	}
	if h.BodyTimeout == 0 {
		h.BodyTimeout = caddy.Duration(DefaultBodyTimeout)
	}
	if h.Replay == "" {
		h.Replay = ReplayMemory
	}
	if h.Mode == "" {
		h.Mode = ModeEnforce
	}
	if err := h.Validate(); err != nil {
		return err
	}
	repl := caddy.NewReplacer()
	secrets := make([]string, len(h.Secrets))
	for i, s := range h.Secrets {
		v, err := expand(repl, s, fmt.Sprintf("secret %d", i+1))
		if err != nil {
			return err
		}
		secrets[i] = v
	}
	warnUnusualSecrets(h.logger, secrets)
	token := ""
	if h.Token != "" {
		v, err := expand(repl, h.Token, "token")
		if err != nil {
			return err
		}
		token = v
	}
	v, err := NewVerifier(secrets, token, time.Duration(h.Tolerance))
	if err != nil {
		return err
	}
	h.verifier = v
	h.observe = h.Mode == ModeObserve

	if h.metrics, err = registerMetrics(ctx.GetMetricsRegistry()); err != nil {
		return fmt.Errorf("reready_verify: metrics: %v", err)
	}

	if h.app == nil { // unit tests set their own
		app, err := ctx.App("reready")
		if err != nil {
			return fmt.Errorf("reready_verify: %v", err)
		}
		h.app = app.(*App)
	}
	if h.Queue != nil {
		if h.Queue.MaxAge == 0 {
			h.Queue.MaxAge = caddy.Duration(DefaultQueueMaxAge)
		}
		if h.Queue.MaxItems == 0 {
			h.Queue.MaxItems = DefaultQueueMaxItems
		}
		h.app.useQueue()
	}

	// Only signature-verified requests take part in replay suppression.
	if v.ChecksSignature() {
		switch h.Replay {
		case ReplayMemory:
			h.replay, h.releaseReplay = loadMemoryReplay(DefaultReplayCapacity, memoryClaimLease, h.logger)
		case ReplayStorage:
			st := newStorageReplay(ctx.Storage(), storageReplayConfig{Logger: h.logger})
			h.replay, h.releaseReplay = st, st.Close
		}
	}
	return nil
}

// Cleanup releases the replay store (the memory store outlives a reload
// while the next config holds it).
func (h *Handler) Cleanup() error {
	if h.releaseReplay != nil {
		return h.releaseReplay()
	}
	return nil
}

// warnUnusualSecrets warns, by position only, about secrets that do not
// look like ReReady's (a common mistake: pasting the token or a wrong value).
func warnUnusualSecrets(log *zap.Logger, secrets []string) {
	for i, s := range secrets {
		if !strings.HasPrefix(s, SecretPrefix) {
			log.Warn("signing secret does not start with "+SecretPrefix+" as ReReady's do", zap.Int("secret", i+1))
		}
	}
}

// expand resolves placeholders in a secret or token. Errors name the
// placeholders involved, never the value.
func expand(repl *caddy.Replacer, raw, what string) (string, error) {
	v, err := repl.ReplaceOrErr(raw, true, true)
	if err == nil && v == "" {
		err = errors.New("empty value")
	}
	if err != nil {
		if ph := placeholders(raw); ph != "" {
			return "", fmt.Errorf("%s: %s expanded to an empty or unknown value (an unset variable or unreadable file?)", what, ph)
		}
		return "", fmt.Errorf("%s is empty", what)
	}
	return v, nil
}

// placeholders lists the {…} parts of s, which name a source, not a secret.
func placeholders(s string) string {
	var out []string
	for {
		i := strings.IndexByte(s, '{')
		if i < 0 {
			break
		}
		j := strings.IndexByte(s[i:], '}')
		if j < 0 {
			break
		}
		out = append(out, s[i:i+j+1])
		s = s[i+j+1:]
	}
	return strings.Join(out, " ")
}

// Validate checks the configuration.
func (h *Handler) Validate() error {
	if len(h.Secrets) == 0 && h.Token == "" {
		return errors.New("reready_verify: at least one secret or a token is required")
	}
	for i, s := range h.Secrets {
		if s == "" {
			return fmt.Errorf("reready_verify: secret %d is empty", i+1)
		}
	}
	if h.Tolerance < 0 {
		return fmt.Errorf("reready_verify: tolerance %s must be positive", time.Duration(h.Tolerance))
	}
	if h.MaxBody < 0 {
		return fmt.Errorf("reready_verify: max_body %d must be positive", h.MaxBody)
	}
	if h.BodyTimeout < 0 {
		return fmt.Errorf("reready_verify: body_timeout %s must be positive", time.Duration(h.BodyTimeout))
	}
	switch h.Replay {
	case "", ReplayMemory, ReplayStorage, ReplayOff:
	default:
		return fmt.Errorf("reready_verify: replay %q: want memory, storage or off", h.Replay)
	}
	switch h.Mode {
	case "", ModeEnforce, ModeObserve:
	default:
		return fmt.Errorf("reready_verify: mode %q: want enforce or observe", h.Mode)
	}
	if q := h.Queue; q != nil {
		if q.MaxAge < 0 {
			return fmt.Errorf("reready_verify: queue max_age %s must be positive", time.Duration(q.MaxAge))
		}
		if q.MaxItems < 0 {
			return fmt.Errorf("reready_verify: queue max_items %d must be positive", q.MaxItems)
		}
	}
	return nil
}

// Canonical forms of the headers the handler reads and sets.
const (
	hdrSignature      = "X-Reready-Signature-512"
	hdrState          = "X-Reready-State"
	hdrDeviceReturnID = "X-Reready-Device-Return-Id"
	hdrSerialNumber   = "X-Reready-Serial-Number"
	hdrTest           = "X-Reready-Test"
	hdrTicketURL      = "X-Reready-Ticket-Url"
	hdrURL            = "X-Reready-Url"
	hdrTimestamp      = "X-Reready-Timestamp"
	hdrVerified       = "X-Reready-Verified"
	hdrRejectReason   = "X-Reready-Reject-Reason"
)

// ServeHTTP runs the checks in contract order and passes verified requests
// on: method, Content-Length, body, authentication, payload, replay gate,
// request rewrite, next. The body buffer goes back to its pool only after
// next, and so the upstream round trip, is done with it.
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
	ref, f := h.readBody(w, r)
	if f != nil {
		return h.reject(w, r, start, nil, f)
	}
	st := &requestState{body: newBodyReader(ref)}
	defer st.release(r)
	body := st.body.buf

	f = h.authenticate(r, body, &st.auth)
	if f == nil {
		var err error
		if st.event, err = parsePayload(body, st.strs[:0]); err != nil {
			f = err.(*Failure)
		}
	}
	if f != nil {
		if !h.observe {
			if st.auth.signed {
				st.id = signedDeliveryID(st.auth.sig.ts, &st.auth.mac)
			}
			return h.reject(w, r, start, st, f)
		}
		h.logReject(r, f, statusFor(f.Reason), true)
		h.metrics.observe(outcomeObserved, string(f.Reason), time.Since(start))
		st.auth = auth{verified: "none", reason: f.Reason, query: st.auth.query, stripQuery: st.auth.stripQuery}
		st.event = Event{}
		h.forwardable(r, st)
		st.status.ResponseWriter = w
		defer func() { h.journalLive(r, st, start, OutcomeObserved, f.Reason, st.answered(), st.upstreamStatus()) }()
		st.nextErr = next.ServeHTTP(&st.status, r)
		return st.nextErr
	}
	if st.auth.signed {
		st.id = signedDeliveryID(st.auth.sig.ts, &st.auth.mac)
	} else {
		st.id = randomDeliveryID(start.Unix())
	}
	if !KnownState(st.event.State) {
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
	event  Event
	status statusWriter
	hdrs   [12]string // backing store of the header values set upstream
	strs   [320]byte  // the event's strings, when they fit

	claim        replayClaim
	claimed      bool
	nextReturned bool  // next returned (did not panic)
	nextErr      error // what it returned

	id         deliveryID
	idText     string      // id.String(), once needed
	queued     bool        // stored for redelivery and answered 202
	queueW     queueWriter // the response writer with the queue on
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
		if err := h.replay.Commit(ctx, st.claim, h.now(), h.replayTTL(st.auth.sig.ts)); err != nil {
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

// forwardable rewrites the request for the upstream: the exact body, the
// query without ?token=, client X-ReReady-* headers replaced by ours, and
// the placeholders.
func (h *Handler) forwardable(r *http.Request, st *requestState) {
	if st.auth.stripQuery {
		setQuery(r, st.auth.query)
	}
	r.Body = &st.body
	r.ContentLength = int64(len(st.body.buf))
	r.TransferEncoding = nil
	r.Trailer = nil // trailers would reopen chunked framing and carry X-ReReady-* past us
	delete(r.Header, "Transfer-Encoding")
	delete(r.Header, "Expect")
	delete(r.Header, "Trailer")
	dropReReadyConnectionTokens(r.Header)
	setContentLength(r.Header, len(st.body.buf))
	setEventHeaders(r.Header, st)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Map(st.placeholder)
	}
}

// readBody reads the body under max_body and body_timeout.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) (*[]byte, *Failure) {
	timeout := time.Duration(h.BodyTimeout)
	start := time.Now()
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
	sig        sigItems
	mac        [macSize]byte // the MAC that matched: with t, the replay key
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
		return fail(ReasonSignatureMissing, "no %s header", SignatureHeader)
	case len(vals) > 1:
		return fail(ReasonSignatureDuplicate, "%d %s headers", len(vals), SignatureHeader)
	}
	if _, err := h.verifier.verify(&a.sig, vals[0], body, h.now(), &a.mac); err != nil {
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

// dropReReadyConnectionTokens removes X-ReReady-* names from the
// Connection header: reverse_proxy deletes every header named there as
// hop-by-hop, which would let a client strip the trusted headers (or, in
// observe mode, the X-ReReady-Verified: none marker).
func dropReReadyConnectionTokens(hdr http.Header) {
	vals, ok := hdr["Connection"]
	if !ok {
		return
	}
	var kept []string
	for _, v := range vals {
		for _, tok := range strings.Split(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !isReReadyHeader(tok) {
				kept = append(kept, tok)
			}
		}
	}
	if len(kept) == 0 {
		delete(hdr, "Connection")
		return
	}
	hdr["Connection"] = []string{strings.Join(kept, ", ")}
}

// setContentLength sets the header, keeping the client's value when it is
// already right (the usual case), which saves an allocation.
func setContentLength(hdr http.Header, n int) {
	var buf [20]byte
	digits := strconv.AppendInt(buf[:0], int64(n), 10)
	if v := hdr["Content-Length"]; len(v) == 1 && v[0] == string(digits) {
		return
	}
	hdr["Content-Length"] = []string{string(digits)}
}

// setEventHeaders removes every client-sent X-ReReady-* header (matching
// case-insensitively and treating '_' and '.' as '-', since PHP, CGI and
// others fold them together) except the signature, then sets the trusted
// ones. An observed (unverified) request gets only X-ReReady-Verified:
// none and X-ReReady-Reject-Reason.
func setEventHeaders(hdr http.Header, st *requestState) {
	ev, a, vals := &st.event, &st.auth, st.hdrs[:0]
	for k := range hdr {
		if k != hdrSignature && isReReadyHeader(k) {
			delete(hdr, k)
		}
	}
	// One backing array (vals, cap 12) for all values instead of one slice
	// per header.
	set := func(k, v string) {
		vals = append(vals, v)
		hdr[k] = vals[len(vals)-1 : len(vals) : len(vals)]
	}
	if a.reason != "" {
		set(hdrVerified, a.verified)
		set(hdrRejectReason, string(a.reason))
		return
	}
	set(hdrState, ev.State)
	set(hdrDeviceReturnID, ev.DeviceReturnID)
	if ev.HasSerialNumber {
		set(hdrSerialNumber, ev.SerialNumber)
	}
	set(hdrTest, strconv.FormatBool(ev.Test))
	if ev.HasTicketURL {
		set(hdrTicketURL, ev.TicketURL)
	}
	if ev.HasURL {
		set(hdrURL, ev.URL)
	}
	if a.signed {
		set(hdrTimestamp, a.sig.t)
	}
	set(hdrVerified, a.verified)
	st.deliveryHeaders(set)
}

func isReReadyHeader(k string) bool {
	const prefix = "x-reready-"
	if len(k) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := k[i]
		switch {
		case c == '_' || c == '.':
			c = '-'
		case 'A' <= c && c <= 'Z':
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// placeholder serves {http.reready.*} for one request.
func (st *requestState) placeholder(key string) (any, bool) {
	const prefix = "http.reready."
	if !strings.HasPrefix(key, prefix) {
		return nil, false
	}
	ev, a := &st.event, &st.auth
	switch key[len(prefix):] {
	case "state":
		return ev.State, true
	case "device_return_id":
		return ev.DeviceReturnID, true
	case "serial_number":
		return ev.SerialNumber, true
	case "test":
		if a.reason != "" {
			return "", true
		}
		return strconv.FormatBool(ev.Test), true
	case "ticket_url":
		return ev.TicketURL, true
	case "url":
		return ev.URL, true
	case "timestamp":
		if !a.signed || a.reason != "" {
			return "", true
		}
		return a.sig.t, true
	case "verified":
		return a.verified, true
	case "reject_reason":
		return string(a.reason), true
	case "delivery_id":
		return st.deliveryID(), true
	case "attempt":
		if st.redelivery != nil {
			return strconv.Itoa(st.redelivery.attempt), true
		}
		if a.reason != "" {
			return "", true
		}
		return "1", true
	}
	return nil, false
}

// statusFor maps a reason to its HTTP status.
func statusFor(r Reason) int {
	switch r {
	case ReasonMethod:
		return http.StatusMethodNotAllowed
	case ReasonBodyTooLarge:
		return http.StatusRequestEntityTooLarge
	case ReasonBodyTimeout:
		return http.StatusRequestTimeout
	case ReasonBodyRead:
		return http.StatusBadRequest
	case ReasonReplayInFlight:
		return http.StatusConflict
	case ReasonReplayUnavailable:
		return http.StatusServiceUnavailable
	case ReasonReplayDelivered:
		return http.StatusOK
	case ReasonSignatureMissing, ReasonSignatureDuplicate, ReasonSignatureMalformed,
		ReasonTimestampStale, ReasonTimestampFuture, ReasonSignatureMismatch,
		ReasonTokenMissing, ReasonTokenDuplicate, ReasonTokenMismatch:
		return http.StatusUnauthorized
	}
	return http.StatusBadRequest
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
