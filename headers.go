package rereadyverify

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/caddyserver/caddy/v2"
)

// This file is every header name the handler reads and sets, and rewrites
// a verified request for the upstream: the trusted X-ReReady-* headers
// (client-sent ones removed), the delivery's own headers, the body's
// framing, and the {http.reready.*} placeholders.

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

	// Set on a forwarded delivery besides the event's (deliveryHeaders).
	hdrDeliveryID = "X-Reready-Delivery-Id"
	hdrAttempt    = "X-Reready-Attempt"     // redeliveries
	hdrReceivedAt = "X-Reready-Received-At" // redeliveries
	hdrReplay     = "X-Reready-Replay"      // an operator's replay (replay_range.go)
)

// Headers of the admin API's answers.
const (
	// journalHeader carries the journal's epoch, so a follower notices
	// that the process (and its sequence numbers) changed.
	journalHeader = "X-Reready-Journal"
	// nextCursorHeader carries the cursor of the next page of a range
	// query; absent on the last page.
	nextCursorHeader = "X-Reready-Next-Cursor"
	// partialHeader says how many history objects were listed but could
	// not be read (swept meanwhile, or on Redis not written yet): the
	// answer may lack their entries. Absent when none.
	partialHeader = "X-Reready-Partial"
)

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
	dropClientHeaders(r.Header)
	dropReReadyConnectionTokens(r.Header)
	setContentLength(r.Header, len(st.body.buf))
	setEventHeaders(r.Header, st)
	if repl, ok := r.Context().Value(caddy.ReplacerCtxKey).(*caddy.Replacer); ok {
		repl.Map(st.placeholder)
	}
}

// dropClientHeaders removes, in one pass over the map, the body framing
// headers the rewritten body replaces (Transfer-Encoding, Expect, Trailer)
// and every client-sent X-ReReady-* header (matching case-insensitively
// and treating '_' and '.' as '-', since PHP, CGI and others fold them
// together) except the signature; setEventHeaders then sets the trusted
// ones.
func dropClientHeaders(hdr http.Header) {
	for k := range hdr {
		switch {
		case k == "Transfer-Encoding", k == "Expect", k == "Trailer",
			k != hdrSignature && isReReadyHeader(k):
			delete(hdr, k)
		}
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

// setEventHeaders sets the trusted X-ReReady-* headers, once
// dropClientHeaders has removed the client's. An observed (unverified)
// request gets only X-ReReady-Verified: none and X-ReReady-Reject-Reason.
func setEventHeaders(hdr http.Header, st *requestState) {
	ev, a, vals := &st.event, &st.auth, st.hdrs[:0]
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
		set(hdrTimestamp, a.sig.T)
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
		return a.sig.T, true
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

// deliveryHeaders adds the delivery id, and for a redelivery its attempt
// and arrival time, to a forwarded request.
func (st *requestState) deliveryHeaders(set func(k, v string)) {
	if st.id.isZero() {
		return
	}
	set(hdrDeliveryID, st.deliveryID())
	if rd := st.redelivery; rd != nil {
		set(hdrAttempt, strconv.Itoa(rd.attempt))
		set(hdrReceivedAt, rd.item.ReceivedAt.UTC().Format(time.RFC3339))
		if rd.item.ReplayID != "" {
			set(hdrReplay, rd.item.ReplayID)
		}
	}
}
