package rereadyverify

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

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
// checked), X-ReReady-Verified (hmac, token or hmac,token) and
// X-ReReady-Delivery-Id (the same on every attempt of a delivery).
//
// With queue, a delivery the rest of the route fails (an error, or a 5xx,
// 408 or 429 answer) is stored in Caddy's storage and answered 202, then
// redelivered by the reready app through the same route, with
// X-ReReady-Attempt and X-ReReady-Received-At too; a delivery whose device
// return has queued deliveries waits behind them (202). Every request is
// recorded in the reready app's journal.
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
// `{http.reready.delivery_id}`      | the delivery id; empty when observed
// `{http.reready.attempt}`          | `1` live, the attempt number redelivered
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
	// verified delivery that the rest of the route fails (an error of
	// status 5xx, 408 or 429, such as 502/504, or such an answer) is stored
	// in Caddy's storage and answered 202, then redelivered through the
	// same route until the app answers 2xx; an answer of another 4xx makes
	// it dead at once, and so does max_age. A delivery whose device return
	// has queued deliveries waits behind them. Default: off.
	Queue *QueueConfig `json:"queue,omitempty"`

	app           *App
	verifier      *verify.Verifier
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
	v, err := verify.New(secrets, token, time.Duration(h.Tolerance))
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
		h.app.useQueue(h.Queue)
	}

	// Only signature-verified requests take part in replay suppression.
	if v.ChecksSignature() {
		switch h.Replay {
		case ReplayMemory:
			h.replay, h.releaseReplay = loadMemoryReplay(DefaultReplayCapacity, memoryClaimLease, h.logger)
		case ReplayStorage:
			st := newStorageReplay(bounded(ctx.Storage()), storageReplayConfig{Logger: h.logger})
			h.replay, h.releaseReplay = st, st.Close
			h.app.startWithConfig(st.startSweep)
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
		if !strings.HasPrefix(s, verify.SecretPrefix) {
			log.Warn("signing secret does not start with "+verify.SecretPrefix+" as ReReady's do", zap.Int("secret", i+1))
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

// Interface guards
var (
	_ caddy.Provisioner           = (*Handler)(nil)
	_ caddy.CleanerUpper          = (*Handler)(nil)
	_ caddy.Validator             = (*Handler)(nil)
	_ caddyhttp.MiddlewareHandler = (*Handler)(nil)
)
