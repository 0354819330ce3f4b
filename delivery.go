package rereadyverify

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"unsafe"

	"github.com/reready-verify/caddy-reready-verify/internal/verify"
)

// deliveryID names one delivery. It is the replay key, the queue item's
// name, the journal's delivery_id and the X-ReReady-Delivery-Id header.
//
// For a signed delivery it derives from what was signed: the verified t and
// a digest of the MAC that matched, so a resend of the same signed request
// has the same id, and endpoints with their own secrets that receive the
// same payload never share one. The digest does not reveal the MAC. For a
// token-only delivery (nothing signed) it is the time it arrived and 128
// random bits.
//
// Its text form is "<t>-<32 hex digits>"; names sort by t while t has 10
// digits (2001 to 2286).
type deliveryID struct {
	t int64
	h [16]byte
}

// deliveryIDDomain separates this digest from any other use of the MAC.
const deliveryIDDomain = "reready_verify delivery id\x00"

// signedDeliveryID is the id of a delivery signed at t whose matching MAC
// is mac.
func signedDeliveryID(t int64, mac *[verify.MACSize]byte) deliveryID {
	var buf [len(deliveryIDDomain) + verify.MACSize]byte
	copy(buf[:], deliveryIDDomain)
	copy(buf[len(deliveryIDDomain):], mac[:])
	sum := sha256.Sum256(buf[:])
	d := deliveryID{t: t}
	copy(d.h[:], sum[:])
	return d
}

// randomDeliveryID is the id of an unsigned delivery that arrived at unix
// second t.
func randomDeliveryID(t int64) deliveryID {
	d := deliveryID{t: t}
	_, _ = rand.Read(d.h[:])
	return d
}

func (d deliveryID) isZero() bool { return d == deliveryID{} }

// String is the id's text form, "<t>-<32 hex digits>".
func (d deliveryID) String() string {
	var b [20 + 1 + 2*16]byte
	return string(d.appendTo(b[:0]))
}

func (d deliveryID) appendTo(b []byte) []byte {
	b = strconv.AppendInt(b, d.t, 10)
	b = append(b, '-')
	return hex.AppendEncode(b, d.h[:])
}

// parseDeliveryID reads the text form; ok is false for anything else, so an
// id from a URL can never name a storage path outside the queue.
func parseDeliveryID(s string) (d deliveryID, ok bool) {
	ts, hx, found := strings.Cut(s, "-")
	if !found || len(hx) != 2*len(d.h) || len(ts) == 0 || len(ts) > verify.MaxTimestampDigits {
		return deliveryID{}, false
	}
	t, ok := verify.ParseTimestamp(ts)
	if !ok {
		return deliveryID{}, false
	}
	if _, err := hex.Decode(d.h[:], []byte(hx)); err != nil || strings.ToLower(hx) != hx {
		return deliveryID{}, false
	}
	d.t = t
	return d, true
}

// deliveryID is the delivery id's text, made once per request in the
// request's state (no allocation of its own).
func (st *requestState) deliveryID() string {
	if st.idText == "" && !st.id.isZero() {
		b := st.id.appendTo(st.idBuf[:0])
		st.idText = unsafe.String(unsafe.SliceData(b), len(b)) // idBuf is not written again
	}
	return st.idText
}
