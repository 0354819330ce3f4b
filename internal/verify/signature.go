// Package verify is the pure core of reready_verify, shared by the Caddy
// handler and the `caddy reready` command: the X-ReReady-Signature-512
// header parser, HMAC-SHA512 signing and checking, the ?token= check and
// the payload scanner. It has no Caddy types (the compiler keeps Caddy
// out: nothing here imports it), so a signature the command makes is by
// construction one the handler accepts.
package verify

import (
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"strconv"
	"strings"
	"sync"
	"time"
)

// This file is the signature: its header, signing, and checking it.

// SignatureHeader is the header ReReady signs each delivery with.
const SignatureHeader = "X-ReReady-Signature-512"

// SecretPrefix starts every ReReady signing secret key.
const SecretPrefix = "ssk_"

// MACSize is the length of an HMAC-SHA512 in bytes; its hex form is twice
// that.
const MACSize = sha512.Size

// MaxTimestampDigits bounds t: 1 to 10 ASCII digits of unix seconds.
const MaxTimestampDigits = 10

// Reason is a stable code naming why a delivery was rejected. The same code
// appears in the error, the log line, the journal and the metric label.
type Reason string

// The reasons this package finds. They are part of the module's public
// contract (the handler adds its own, for the method and the body).
const (
	ReasonSignatureMissing   Reason = "signature_missing"
	ReasonSignatureDuplicate Reason = "signature_duplicated"
	ReasonSignatureMalformed Reason = "signature_malformed"
	ReasonTimestampStale     Reason = "timestamp_stale"
	ReasonTimestampFuture    Reason = "timestamp_future"
	ReasonSignatureMismatch  Reason = "signature_mismatch"
	ReasonTokenMissing       Reason = "token_missing"
	ReasonTokenDuplicate     Reason = "token_duplicated"
	ReasonTokenMismatch      Reason = "token_mismatch"
	ReasonPayloadEmpty       Reason = "payload_empty"
	ReasonPayloadInvalidJSON Reason = "payload_invalid_json"
	ReasonPayloadMissing     Reason = "payload_missing_field"
	ReasonPayloadWrongType   Reason = "payload_wrong_type"
	ReasonPayloadDuplicate   Reason = "payload_duplicate_field"
	ReasonPayloadBadString   Reason = "payload_invalid_string"
)

// Failure is a rejection: a stable reason code and a message that is safe to
// log and to show (it never holds a secret, the token or an expected MAC).
type Failure struct {
	Reason Reason
	Msg    string
}

func (f *Failure) Error() string { return string(f.Reason) + ": " + f.Msg }

// Fail makes a Failure; quote client-sent text in it through Clip.
func Fail(r Reason, format string, args ...any) *Failure {
	return &Failure{Reason: r, Msg: fmt.Sprintf(format, args...)}
}

// ReasonOf is err's reason code when it is a *Failure, else "".
func ReasonOf(err error) Reason {
	if f, ok := err.(*Failure); ok {
		return f.Reason
	}
	return ""
}

// Signature is a parsed X-ReReady-Signature-512 header value.
type Signature struct {
	// T is the timestamp exactly as sent (the bytes that were signed).
	T string
	// Timestamp is T as unix seconds.
	Timestamp int64
	// V holds each v value as sent: 128 hex characters, either case.
	V []string
}

// ParseSignatureHeader parses a header value such as
// "t=1744831201,v=feef…". Items are comma-separated key=value pairs with
// optional surrounding spaces; exactly one t (1-10 digits) and at least one
// v (128 hex characters) are required; unknown keys are ignored. Any item
// that does not parse makes the whole header malformed.
func ParseSignatureHeader(h string) (Signature, error) {
	var it sigItems
	if err := it.parse(h); err != nil {
		return Signature{}, err
	}
	return it.signature(), nil
}

// sigItems is a parsed header that keeps the first v values inline, so the
// handler parses without allocating; more spill into extra.
type sigItems struct {
	t     string
	ts    int64
	n     int
	v     [4]string
	extra []string
	key   int // after a match: the index of the secret that matched
}

func (it *sigItems) numV() int { return it.n + len(it.extra) }

func (it *sigItems) vAt(i int) string {
	if i < it.n {
		return it.v[i]
	}
	return it.extra[i-it.n]
}

func (it *sigItems) signature() Signature {
	sig := Signature{T: it.t, Timestamp: it.ts, V: make([]string, 0, it.numV())}
	for i := 0; i < it.numV(); i++ {
		sig.V = append(sig.V, it.vAt(i))
	}
	return sig
}

func (it *sigItems) parse(h string) error {
	haveT := false
	rest := h
	for i := 0; ; i++ {
		item := rest
		comma := strings.IndexByte(rest, ',')
		if comma >= 0 {
			item, rest = rest[:comma], rest[comma+1:]
		}
		item = trimSpaces(item)
		eq := strings.IndexByte(item, '=')
		if eq < 0 {
			if item == "" {
				return Fail(ReasonSignatureMalformed, "item %d is empty", i+1)
			}
			return Fail(ReasonSignatureMalformed, "item %d has no '='", i+1)
		}
		key, val := trimSpaces(item[:eq]), trimSpaces(item[eq+1:])
		switch key {
		case "":
			return Fail(ReasonSignatureMalformed, "item %d has an empty key", i+1)
		case "t":
			if haveT {
				return Fail(ReasonSignatureMalformed, "more than one t")
			}
			ts, ok := ParseTimestamp(val)
			if !ok {
				return Fail(ReasonSignatureMalformed, "t %q is not 1-%d digits", clip(val), MaxTimestampDigits)
			}
			haveT, it.t, it.ts = true, val, ts
		case "v":
			if len(val) != 2*MACSize || !isHex(val) {
				return Fail(ReasonSignatureMalformed, "v %q is not %d hex characters", clip(val), 2*MACSize)
			}
			if it.n < len(it.v) {
				it.v[it.n] = val
				it.n++
			} else {
				it.extra = append(it.extra, val)
			}
		}
		if comma < 0 {
			break
		}
	}
	if !haveT {
		return Fail(ReasonSignatureMalformed, "no t")
	}
	if it.numV() == 0 {
		return Fail(ReasonSignatureMalformed, "no v")
	}
	return nil
}

// String formats the signature as a header value: "t=<T>,v=<V>[,v=<V>...]".
func (s Signature) String() string {
	var b strings.Builder
	b.WriteString("t=")
	b.WriteString(s.T)
	for _, v := range s.V {
		b.WriteString(",v=")
		b.WriteString(v)
	}
	return b.String()
}

func trimSpaces(s string) string {
	for len(s) > 0 && (s[0] == ' ' || s[0] == '\t') {
		s = s[1:]
	}
	for len(s) > 0 && (s[len(s)-1] == ' ' || s[len(s)-1] == '\t') {
		s = s[:len(s)-1]
	}
	return s
}

// ParseTimestamp reads t: 1 to MaxTimestampDigits ASCII digits.
func ParseTimestamp(s string) (int64, bool) {
	if len(s) == 0 || len(s) > MaxTimestampDigits {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// decodeMAC decodes a 128-character hex v into out without allocating.
func decodeMAC(out *[MACSize]byte, s string) bool {
	if len(s) != 2*MACSize {
		return false
	}
	for i := range out {
		hi, lo := hexValue[s[2*i]], hexValue[s[2*i+1]]
		if hi|lo > 0xf {
			return false
		}
		out[i] = hi<<4 | lo
	}
	return true
}

// hexValue maps a hex digit (either case) to its value and every other
// byte to 0xff: one table load per character on the signature's path.
var hexValue = func() (t [256]byte) {
	for c := range t {
		t[c] = 0xff
	}
	for c := '0'; c <= '9'; c++ {
		t[c] = byte(c - '0')
	}
	for c := 'a'; c <= 'f'; c++ {
		t[c] = byte(c-'a') + 10
		t[c-'a'+'A'] = byte(c-'a') + 10
	}
	return t
}()

func fromHex(c byte) (byte, bool) {
	v := hexValue[c]
	return v, v <= 0xf
}

func isHex(s string) bool {
	for i := 0; i < len(s); i++ {
		if hexValue[s[i]] > 0xf {
			return false
		}
	}
	return true
}

// Clip shortens s to at most n bytes, on a UTF-8 boundary, marking the
// cut with "…": client-sent text quoted in messages, logs and the journal.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	i := n
	for i > 0 && s[i]&0xC0 == 0x80 {
		i--
	}
	return s[:i] + "…"
}

// clip is Clip for text quoted in a rejection's message.
func clip(s string) string { return Clip(s, 24) }

// MAC returns hex(HMAC-SHA512(secret, t + "." + body)), the value ReReady
// sends as v. The key is the secret string's exact bytes, ssk_ included.
func MAC(secret, t string, body []byte) string {
	m := hmac.New(sha512.New, []byte(secret))
	m.Write([]byte(t))
	m.Write([]byte{'.'})
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// Sign returns the X-ReReady-Signature-512 value for body at time t.
func Sign(secret string, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v=" + MAC(secret, ts, body)
}

// Verifier checks signatures and tokens against a fixed configuration. It is
// safe for concurrent use; HMAC states are pooled per secret.
type Verifier struct {
	keys      []*hmacKey
	token     [sha256.Size]byte
	hasToken  bool
	tolerance int64 // whole seconds
}

type hmacKey struct{ pool sync.Pool }

// macState is a pooled HMAC state with its scratch space, so that nothing
// escapes to the heap per request (arguments of interface calls do).
type macState struct {
	h   hash.Hash
	pre [MaxTimestampDigits + 1]byte
	out [MACSize]byte
}

func newHMACKey(secret string) *hmacKey {
	key := []byte(secret)
	k := &hmacKey{}
	k.pool.New = func() any { return &macState{h: hmac.New(sha512.New, key)} }
	return k
}

// sum writes HMAC(t + "." + body) into out.
func (k *hmacKey) sum(out *[MACSize]byte, t string, body []byte) {
	m := k.pool.Get().(*macState)
	n := copy(m.pre[:], t)
	m.pre[n] = '.'
	m.h.Write(m.pre[:n+1])
	m.h.Write(body)
	m.h.Sum(m.out[:0])
	*out = m.out
	m.h.Reset()
	k.pool.Put(m)
}

// New returns a Verifier for the given secrets (any may match; none
// disables the signature check) and token ("" disables the token check).
// Tolerance is the largest accepted |now - t|, counted in whole seconds.
func New(secrets []string, token string, tolerance time.Duration) (*Verifier, error) {
	if len(secrets) == 0 && token == "" {
		return nil, errors.New("at least one secret or a token is required")
	}
	if tolerance < time.Second {
		return nil, fmt.Errorf("tolerance %s must be at least 1s (t counts whole seconds)", tolerance)
	}
	v := &Verifier{tolerance: int64(tolerance / time.Second)}
	for i, s := range secrets {
		if s == "" {
			return nil, fmt.Errorf("secret %d is empty", i+1)
		}
		v.keys = append(v.keys, newHMACKey(s))
	}
	if token != "" {
		v.token, v.hasToken = sha256.Sum256([]byte(token)), true
	}
	return v, nil
}

// ChecksSignature reports whether a signature is required.
func (v *Verifier) ChecksSignature() bool { return len(v.keys) > 0 }

// ChecksToken reports whether a ?token= is required.
func (v *Verifier) ChecksToken() bool { return v.hasToken }

// Result is what a signature check established. The handler keeps one per
// request: Verify fills it without allocating.
type Result struct {
	// T is the signed timestamp exactly as sent; TS is it as unix seconds.
	T  string
	TS int64
	// Key is the index of the configured secret that matched, V the index
	// of the v value that matched.
	Key, V int
	// MAC is the MAC that matched (with T, it names the delivery).
	MAC [MACSize]byte
}

// Verify checks a header value against body at time now and fills res.
// The error is a *Failure. The parsed header stays on Verify's stack, so
// a Result kept per request is small.
func (v *Verifier) Verify(header string, body []byte, now time.Time, res *Result) error {
	var it sigItems
	return v.verify(header, body, now, res, &it)
}

// verify is Verify with the parsed header in it, for VerifySignature.
func (v *Verifier) verify(header string, body []byte, now time.Time, res *Result, it *sigItems) error {
	if err := it.parse(header); err != nil {
		*it = sigItems{}
		return err
	}
	res.T, res.TS = it.t, it.ts
	if err := v.CheckTimestamp(it.ts, now); err != nil {
		return err
	}
	i := v.match(it, body, &res.MAC)
	if i < 0 {
		return Fail(ReasonSignatureMismatch, "no v matched under any configured secret")
	}
	res.Key, res.V = it.key, i
	return nil
}

// VerifySignature checks a header value against body at time now. It
// returns the parsed signature and the index of the v that matched.
func (v *Verifier) VerifySignature(header string, body []byte, now time.Time) (Signature, int, error) {
	var res Result
	var it sigItems
	err := v.verify(header, body, now, &res, &it)
	if it.t == "" {
		return Signature{}, -1, err
	}
	if err != nil {
		return it.signature(), -1, err
	}
	return it.signature(), res.V, nil
}

// CheckTimestamp rejects a t further than the tolerance from now.
func (v *Verifier) CheckTimestamp(ts int64, now time.Time) error {
	d := now.Unix() - ts
	switch {
	case d > v.tolerance:
		return Fail(ReasonTimestampStale, "t %d is %s old; tolerance is %s", ts, HumanSeconds(d), HumanSeconds(v.tolerance))
	case -d > v.tolerance:
		return Fail(ReasonTimestampFuture, "t %d is %s in the future; tolerance is %s", ts, HumanSeconds(-d), HumanSeconds(v.tolerance))
	}
	return nil
}

// humanSeconds writes a non-negative number of seconds the way Go writes
// durations (4m59s, 14h12m5s), with whole days in front from one day on
// (591d19h58m20s), a form caddy.ParseDuration reads back.
// HumanSeconds writes a whole number of seconds the way the verifier's
// messages do: "5m0s", "1d", "1d2h0m0s".
func HumanSeconds(sec int64) string {
	days, rest := sec/86400, time.Duration(sec%86400)*time.Second
	switch {
	case days == 0:
		return rest.String()
	case rest == 0:
		return strconv.FormatInt(days, 10) + "d"
	}
	return strconv.FormatInt(days, 10) + "d" + rest.String()
}

// Match returns the index of the first v in sig that equals the MAC of body
// under any configured secret, or -1. Comparisons are constant-time on the
// decoded bytes.
func (v *Verifier) Match(sig Signature, body []byte) int {
	it := sigItems{t: sig.T, ts: sig.Timestamp, extra: sig.V}
	return v.match(&it, body, nil)
}

func (v *Verifier) match(it *sigItems, body []byte, mac *[MACSize]byte) int {
	var want, got [MACSize]byte
	for ki, k := range v.keys {
		k.sum(&want, it.t, body)
		for i := 0; i < it.numV(); i++ {
			if !decodeMAC(&got, it.vAt(i)) {
				continue
			}
			if hmac.Equal(want[:], got[:]) {
				it.key = ki
				if mac != nil {
					*mac = want
				}
				return i
			}
		}
	}
	return -1
}
