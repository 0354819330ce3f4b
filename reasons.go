package rereadyverify

import (
	"fmt"
	"net/http"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// This file is the module's vocabulary of reasons: every reason code, in
// one place, with the status a sender gets for it. The same code is the
// error's prefix, the log line's reason, the journal's reason and the
// metric's reason label.

// Reason is a stable code naming why a request was refused or how a
// delivery went. Codes are part of the module's public contract.
type Reason = verify.Reason

// Failure is a refusal: a reason code and a message that is safe to log and
// to show (never a secret, the token or an expected MAC).
type Failure = verify.Failure

// Reasons for refusing a request, and the status each gets.
const (
	// The handler's own checks, before the body is verified.
	ReasonMethod       Reason = "method_not_allowed" // 405
	ReasonBodyTooLarge Reason = "body_too_large"     // 413
	ReasonBodyTimeout  Reason = "body_timeout"       // 408
	ReasonBodyRead     Reason = "body_read_failed"   // 400

	// The signature and the token (internal/verify): 401.
	ReasonSignatureMissing   = verify.ReasonSignatureMissing
	ReasonSignatureDuplicate = verify.ReasonSignatureDuplicate
	ReasonSignatureMalformed = verify.ReasonSignatureMalformed
	ReasonTimestampStale     = verify.ReasonTimestampStale
	ReasonTimestampFuture    = verify.ReasonTimestampFuture
	ReasonSignatureMismatch  = verify.ReasonSignatureMismatch
	ReasonTokenMissing       = verify.ReasonTokenMissing
	ReasonTokenDuplicate     = verify.ReasonTokenDuplicate
	ReasonTokenMismatch      = verify.ReasonTokenMismatch

	// The payload (internal/verify): 400.
	ReasonPayloadEmpty       = verify.ReasonPayloadEmpty
	ReasonPayloadInvalidJSON = verify.ReasonPayloadInvalidJSON
	ReasonPayloadMissing     = verify.ReasonPayloadMissing
	ReasonPayloadWrongType   = verify.ReasonPayloadWrongType
	ReasonPayloadDuplicate   = verify.ReasonPayloadDuplicate
	ReasonPayloadBadString   = verify.ReasonPayloadBadString

	// The replay gate.
	ReasonReplayDelivered   Reason = "replay"                   // 200: already delivered
	ReasonReplayInFlight    Reason = "replay_in_flight"         // 409: being delivered
	ReasonReplayUnavailable Reason = "replay_store_unavailable" // 503: the store failed

	// The queue, refusing.
	ReasonQueueFull        Reason = "queue_full"        // 503: max_items reached
	ReasonQueueUnavailable Reason = "queue_unavailable" // 503, or the app's failure: storage failed
)

// statusFor maps a refusal's reason to its HTTP status.
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
	case ReasonReplayUnavailable, ReasonQueueFull, ReasonQueueUnavailable:
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

// Reasons that record how a queued delivery went, in the journal (no
// status of their own: the sender got 202, or nothing).
const (
	ReasonUpstreamFailed    Reason = "upstream_failed"    // queued: the app failed live
	ReasonHeld              Reason = "held"               // queued behind an earlier delivery of its return
	ReasonPaused            Reason = "paused"             // queued: its path is paused (POST /reready/pause)
	ReasonResentDead        Reason = "resent_dead"        // a resend of a given-up delivery: forwarded, or queued again
	ReasonReplayRequested   Reason = "replay_requested"   // queued again by an operator's replay (POST /reready/replay)
	ReasonRedeliveryFailed  Reason = "redelivery_failed"  // an attempt failed; it is tried again
	ReasonRedeliveryTimeout Reason = "redelivery_timeout" // an attempt ran out of time
	ReasonRouteUnavailable  Reason = "route_unavailable"  // the item's server or route is gone
	ReasonMaxAge            Reason = "max_age"            // given up: max_age passed
	ReasonAppRefused        Reason = "app_refused"        // given up: the app answered a 4xx that retrying cannot change
	ReasonCorrupt           Reason = "item_corrupt"       // given up: the stored item could not be read
)

// fail makes a Failure; quote client-sent text in it through clip.
func fail(r Reason, format string, args ...any) *Failure {
	return &Failure{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// clip shortens client-sent text quoted in a message.
func clip(s string) string { return verify.Clip(s, 24) }
