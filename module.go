// Package rereadyverify is a Caddy HTTP handler that verifies ReReady
// webhooks (HMAC-SHA512 signatures and/or a ?token= parameter) before they
// reach the app behind it.
package rereadyverify

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
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

// Handler verifies ReReady webhook deliveries and passes verified ones on
// with their parsed state as trusted headers and placeholders.
//
// Checks, in order: the method must be POST (405, with `Allow: POST`); a
// declared Content-Length over max_body is refused before reading (413);
// the body is read within body_timeout (408) and max_body (413); the
// signature and/or token must verify (401); the payload must be a ReReady
// JSON object (400). 405, 408 and 413 answers close the connection.
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
// `{http.reready.verified}`         | `hmac`, `token` or `hmac,token`
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

	verifier *Verifier
	logger   *zap.Logger
	now      func() time.Time
}

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
)

// ServeHTTP runs the checks in contract order and passes verified requests on.
func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request, next caddyhttp.Handler) error {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		return h.reject(w, r, fail(ReasonMethod, "method %s is not allowed; only POST", clip(r.Method)))
	}
	if r.ContentLength > h.MaxBody {
		return h.reject(w, r, fail(ReasonBodyTooLarge, "Content-Length %d exceeds max_body %d", r.ContentLength, h.MaxBody))
	}
	body, f := h.readBody(w, r)
	if f != nil {
		return h.reject(w, r, f)
	}
	br := &bodyReader{buf: body}
	defer br.detach()

	a, f := h.authenticate(r, body)
	if f != nil {
		return h.reject(w, r, f)
	}
	ev, err := ParsePayload(body)
	if err != nil {
		return h.reject(w, r, err.(*Failure))
	}
	if !KnownState(ev.State) {
		h.logger.Warn("forwarding unknown state", zap.String("state", clip(ev.State)),
			zap.String("device_return_id", clip(ev.DeviceReturnID)))
	}

	// The request is authentic: rewrite it for the upstream.
	if a.stripQuery {
		setQuery(r, a.query)
	}
	r.Body = br
	r.ContentLength = int64(len(body))
	r.TransferEncoding = nil
	r.Header.Del("Transfer-Encoding")
	r.Header.Del("Expect")
	r.Header.Set("Content-Length", strconv.Itoa(len(body)))
	setEventHeaders(r.Header, &ev, a)
	vars := &eventVars{ev: ev, auth: a}
	r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer).Map(vars.get)

	return next.ServeHTTP(w, r)
}

// readBody reads the body under max_body and body_timeout.
func (h *Handler) readBody(w http.ResponseWriter, r *http.Request) ([]byte, *Failure) {
	timeout := time.Duration(h.BodyTimeout)
	rc := http.NewResponseController(w)
	viaDeadline := rc.SetReadDeadline(time.Now().Add(timeout)) == nil
	var timer *time.Timer
	if !viaDeadline {
		// No connection deadline (e.g. HTTP/3): closing the body ends a
		// blocked read.
		timer = time.AfterFunc(timeout, func() { r.Body.Close() })
	}
	start := time.Now()
	body, err := readBody(r.Body, r.ContentLength, h.MaxBody)
	if viaDeadline {
		// Clear it, or the connection's background read would time out
		// later and cancel the request while the upstream works.
		_ = rc.SetReadDeadline(time.Time{})
	} else {
		timer.Stop()
	}
	var maxErr *http.MaxBytesError
	switch {
	case err == nil:
		return body, nil
	case errors.Is(err, errTooLarge), errors.As(err, &maxErr):
		return nil, fail(ReasonBodyTooLarge, "body exceeds max_body %d", h.MaxBody)
	case isTimeout(err) || !viaDeadline && time.Since(start) >= timeout:
		return nil, fail(ReasonBodyTimeout, "body not read within body_timeout %s", timeout)
	}
	return nil, fail(ReasonBodyRead, "reading body: %v", err)
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || errors.As(err, &ne) && ne.Timeout()
}

// auth is what authentication established.
type auth struct {
	timestamp  string // verified t; "" when no signature was checked
	verified   string // hmac, token or hmac,token
	query      string // the query without ?token=
	stripQuery bool
}

func (h *Handler) authenticate(r *http.Request, body []byte) (auth, *Failure) {
	var a auth
	v := h.verifier
	if v.ChecksSignature() {
		vals := r.Header[hdrSignature]
		switch {
		case len(vals) == 0:
			return a, fail(ReasonSignatureMissing, "no %s header", SignatureHeader)
		case len(vals) > 1:
			return a, fail(ReasonSignatureDuplicate, "%d %s headers", len(vals), SignatureHeader)
		}
		sig, _, err := v.VerifySignature(vals[0], body, h.now())
		if err != nil {
			return a, err.(*Failure)
		}
		a.timestamp, a.verified = sig.T, "hmac"
	}
	if v.ChecksToken() {
		q, err := v.CheckToken(r.URL.RawQuery)
		if err != nil {
			return a, err.(*Failure)
		}
		a.query, a.stripQuery = q, true
		if a.verified == "" {
			a.verified = "token"
		} else {
			a.verified = "hmac,token"
		}
	}
	return a, nil
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

// setEventHeaders removes every client-sent X-ReReady-* header (matching
// case-insensitively and treating '_' and '.' as '-', since PHP, CGI and
// others fold them together) except the signature, then sets the trusted
// ones.
func setEventHeaders(hdr http.Header, ev *Event, a auth) {
	for k := range hdr {
		if k != hdrSignature && isReReadyHeader(k) {
			delete(hdr, k)
		}
	}
	vals := make([]string, 0, 8)
	set := func(k, v string) {
		vals = append(vals, v)
		hdr[k] = vals[len(vals)-1 : len(vals) : len(vals)]
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
	if a.timestamp != "" {
		set(hdrTimestamp, a.timestamp)
	}
	set(hdrVerified, a.verified)
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

// eventVars serves the {http.reready.*} placeholders for one request.
type eventVars struct {
	ev   Event
	auth auth
}

func (e *eventVars) get(key string) (any, bool) {
	const prefix = "http.reready."
	if !strings.HasPrefix(key, prefix) {
		return nil, false
	}
	switch key[len(prefix):] {
	case "state":
		return e.ev.State, true
	case "device_return_id":
		return e.ev.DeviceReturnID, true
	case "serial_number":
		return e.ev.SerialNumber, true
	case "test":
		return strconv.FormatBool(e.ev.Test), true
	case "ticket_url":
		return e.ev.TicketURL, true
	case "url":
		return e.ev.URL, true
	case "timestamp":
		return e.auth.timestamp, true
	case "verified":
		return e.auth.verified, true
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
	case ReasonSignatureMissing, ReasonSignatureDuplicate, ReasonSignatureMalformed,
		ReasonTimestampStale, ReasonTimestampFuture, ReasonSignatureMismatch,
		ReasonTokenMissing, ReasonTokenDuplicate, ReasonTokenMismatch:
		return http.StatusUnauthorized
	}
	return http.StatusBadRequest
}

// reject logs a rejection once and returns it as a handler error.
func (h *Handler) reject(w http.ResponseWriter, r *http.Request, f *Failure) error {
	status := statusFor(f.Reason)
	switch status {
	case http.StatusMethodNotAllowed, http.StatusRequestTimeout, http.StatusRequestEntityTooLarge:
		w.Header().Set("Connection", "close")
	}
	clientIP, _ := caddyhttp.GetVar(r.Context(), caddyhttp.ClientIPVarKey).(string)
	h.logger.Info("rejected webhook",
		zap.String("reason", string(f.Reason)),
		zap.Int("status", status),
		zap.String("detail", f.Msg),
		zap.String("remote_addr", r.RemoteAddr),
		zap.String("client_ip", clientIP),
		zap.String("method", clip(r.Method)),
		zap.String("path", r.URL.Path),
	)
	return caddyhttp.Error(status, fmt.Errorf("reready_verify: %w", f))
}

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
