package rereadyverify

// Go native fuzz targets. Without -fuzz they run their f.Add seeds and the
// corpus under testdata/fuzz/<Target>/ as ordinary tests (well under a
// second); scripts/fuzz.sh fuzzes each for a bounded time.
//
// The properties are checked against independent reference code written
// here (a second header parser, crypto/hmac directly, encoding/json), not
// against the package's own helpers, so a shared mistake cannot hide. Every
// helper is prefixed fz to stay clear of the package's other test files.

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// ---------------------------------------------------------------------------
// Reference signature-header parser (the contract, written out again).

type fzSig struct {
	t  string
	v  []string
	ok bool
}

func fzTrim(s string) string { return strings.Trim(s, " \t") }

func fzDigits(s string, min, max int) bool {
	if len(s) < min || len(s) > max {
		return false
	}
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

func fzHex128(s string) bool {
	if len(s) != 128 {
		return false
	}
	_, err := hex.DecodeString(s) // accepts either case
	return err == nil
}

// fzParseSig parses a header the way the contract words it: comma-separated
// key=value items with optional surrounding spaces/tabs; exactly one t of
// 1-10 ASCII digits; one or more v of 128 hex characters; unknown keys
// ignored; any item that does not parse makes the whole header malformed.
func fzParseSig(h string) fzSig {
	var s fzSig
	haveT := false
	for _, item := range strings.Split(h, ",") {
		k, v, found := strings.Cut(fzTrim(item), "=")
		k, v = fzTrim(k), fzTrim(v)
		if !found || k == "" {
			return fzSig{}
		}
		switch k {
		case "t":
			if haveT || !fzDigits(v, 1, 10) {
				return fzSig{}
			}
			haveT, s.t = true, v
		case "v":
			if !fzHex128(v) {
				return fzSig{}
			}
			s.v = append(s.v, v)
		}
	}
	s.ok = haveT && len(s.v) > 0
	return s
}

func fzMAC(secret, t string, body []byte) []byte {
	m := hmac.New(sha512.New, []byte(secret))
	m.Write([]byte(t + "."))
	m.Write(body)
	return m.Sum(nil)
}

func fzReason(err error) Reason {
	var f *Failure
	if errors.As(err, &f) {
		return f.Reason
	}
	return ""
}

// ---------------------------------------------------------------------------
// 1. Signature-header parser.

func FuzzParseSignatureHeader(f *testing.F) {
	v1 := strings.Repeat("0123456789abcdef", 8)
	v2 := strings.Repeat("FEDCBA9876543210", 8)
	for _, s := range []string{
		"t=1744831201,v=" + v1,
		" t = 1744831201 ,\tv=" + v1 + " , v=" + v2 + " ",
		"v=" + v1 + ",t=0",
		"t=1744831201,v=" + v1 + ",x=anything,y=",
		"t=0000000001,v=" + v1,
		"t=12345678901,v=" + v1, // 11 digits
		"t=1,t=1,v=" + v1,       // second t
		"t=1,v=" + v1[:127],     // short v
		"t=1,v=" + v1 + "0",     // long v
		"t=1,v=" + v1[:127] + "g",
		"t=1,v=" + v1 + ",",   // trailing comma: empty item
		"t=1,,v=" + v1,        // empty item
		"t=1,v=" + v1 + ",=x", // empty key
		"t=1,v=" + v1 + ",junk",
		"t=+1,v=" + v1,
		"t=-1,v=" + v1,
		"t=1",
		"v=" + v1,
		"",
		",",
		"t=1\v,v=" + v1,
		"\vt=1,v=" + v1, // "\vt" is an unknown key, so no t
		"t=٣,v=" + v1,   // Arabic-Indic digit
		"T=1,V=" + v1,   // keys are case-sensitive: unknown
		"t==1,v=" + v1,
		"t=1,v=" + v1 + "\r\n",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, h string) {
		sig, err := ParseSignatureHeader(h)
		ref := fzParseSig(h)
		if err != nil {
			if r := fzReason(err); r != ReasonSignatureMalformed {
				t.Fatalf("ParseSignatureHeader(%q): reason %q, want %q (err %v)", h, r, ReasonSignatureMalformed, err)
			}
			if ref.ok {
				t.Fatalf("ParseSignatureHeader(%q) rejected a header the contract accepts: %v", h, err)
			}
			return
		}
		if !ref.ok {
			t.Fatalf("ParseSignatureHeader(%q) accepted a header the contract rejects: %+v", h, sig)
		}
		// Exactly one t of 1-10 digits, at least one v of 128 hex characters,
		// and the items are the ones the reference parser saw, in order.
		if !fzDigits(sig.T, 1, 10) {
			t.Fatalf("accepted T %q is not 1-10 digits", sig.T)
		}
		if want, _ := strconv.ParseInt(sig.T, 10, 64); sig.Timestamp != want {
			t.Fatalf("Timestamp %d, want %d (T %q)", sig.Timestamp, want, sig.T)
		}
		if len(sig.V) == 0 {
			t.Fatalf("accepted with no v: %q", h)
		}
		for _, v := range sig.V {
			if !fzHex128(v) {
				t.Fatalf("accepted v %q is not 128 hex characters", v)
			}
		}
		if sig.T != ref.t || !slices.Equal(sig.V, ref.v) {
			t.Fatalf("parsed %q as T=%q V=%q; reference T=%q V=%q", h, sig.T, sig.V, ref.t, ref.v)
		}
		// String() re-parses to the same items.
		s := sig.String()
		again, err := ParseSignatureHeader(s)
		if err != nil {
			t.Fatalf("String() of accepted %q is %q, which does not parse: %v", h, s, err)
		}
		if again.T != sig.T || again.Timestamp != sig.Timestamp || !slices.Equal(again.V, sig.V) {
			t.Fatalf("round trip of %q via %q: got %+v, want %+v", h, s, again, sig)
		}
	})
}

// ---------------------------------------------------------------------------
// 2. Sign, verify, and single-change forgeries.

const fzTolerance = 300 // seconds

func FuzzSignVerify(f *testing.F) {
	f.Add([]byte(`{"device_return_id":"dr_1","state":"complete"}`), uint32(1744831201), "ssk_test_4f9a1c2b7d3e8f60", uint(0), byte(1))
	f.Add([]byte{}, uint32(0), "k", uint(7), byte(0x80))
	f.Add([]byte("x"), uint32(9), "ssk_", uint(1), byte(0))
	f.Add([]byte("\x00\xff\r\n"), uint32(4294967295), strings.Repeat("s", 200), uint(1000), byte(0xff))
	f.Add([]byte("body"), uint32(1000000000), "ssk_x\x00", uint(9), byte(4))
	f.Add(bytes.Repeat([]byte("a"), 300), uint32(300), "é", uint(127), byte(15))
	f.Fuzz(func(t *testing.T, body []byte, ts uint32, secret string, pos uint, flip byte) {
		if secret == "" {
			secret = "ssk_empty_replaced" // an empty secret is a configuration error
		}
		v, err := NewVerifier([]string{secret}, "", fzTolerance*time.Second)
		if err != nil {
			t.Fatalf("NewVerifier: %v", err)
		}
		at := func(sec int64) time.Time { return time.Unix(sec, 0) }
		tnum := int64(ts)
		T := strconv.FormatInt(tnum, 10)
		header := Sign(secret, at(tnum), body)

		// Sign agrees with crypto/hmac used directly.
		wantMAC := fzMAC(secret, T, body)
		if want := "t=" + T + ",v=" + hex.EncodeToString(wantMAC); header != want {
			t.Fatalf("Sign = %q, want %q", header, want)
		}
		mustVerify := func(what, h string, b []byte, now time.Time) {
			t.Helper()
			if _, i, err := v.VerifySignature(h, b, now); err != nil || i < 0 {
				t.Fatalf("%s: VerifySignature(%q) at %d = %d, %v; want success", what, h, now.Unix(), i, err)
			}
		}
		mustFail := func(what, h string, b []byte, now time.Time, want ...Reason) {
			t.Helper()
			_, i, err := v.VerifySignature(h, b, now)
			if err == nil || i >= 0 {
				t.Fatalf("%s: VerifySignature(%q) at %d succeeded (index %d); want %v", what, h, now.Unix(), i, want)
			}
			if r := fzReason(err); !slices.Contains(want, r) {
				t.Fatalf("%s: VerifySignature(%q) at %d: reason %q, want one of %v (%v)", what, h, now.Unix(), r, want, err)
			}
			if strings.Contains(strings.ToLower(err.Error()), hex.EncodeToString(wantMAC)) {
				t.Fatalf("%s: error reveals the expected MAC: %v", what, err)
			}
		}

		mustVerify("genuine", header, body, at(tnum))
		// Tolerance edges, counted in whole seconds.
		mustVerify("now = t+tolerance", header, body, time.Unix(tnum+fzTolerance, 999_999_999))
		mustVerify("now = t-tolerance", header, body, at(tnum-fzTolerance))
		mustFail("now = t+tolerance+1", header, body, at(tnum+fzTolerance+1), ReasonTimestampStale)
		mustFail("now = t-tolerance-1", header, body, at(tnum-fzTolerance-1), ReasonTimestampFuture)
		// Any configured secret may match; a different one never does.
		v2, _ := NewVerifier([]string{secret + "_other", secret}, "", fzTolerance*time.Second)
		if _, i, err := v2.VerifySignature(header, body, at(tnum)); err != nil || i != 0 {
			t.Fatalf("second of two secrets: index %d, %v", i, err)
		}
		v3, _ := NewVerifier([]string{secret + "_other"}, "", fzTolerance*time.Second)
		if _, _, err := v3.VerifySignature(header, body, at(tnum)); fzReason(err) != ReasonSignatureMismatch {
			t.Fatalf("wrong secret: %v, want %s", err, ReasonSignatureMismatch)
		}

		mac := hex.EncodeToString(wantMAC)
		mask := flip
		if mask == 0 {
			mask = 1
		}

		// Body: any changed byte, a dropped or an added byte.
		if len(body) > 0 {
			b := bytes.Clone(body)
			b[pos%uint(len(b))] ^= mask
			mustFail("body byte flipped", header, b, at(tnum), ReasonSignatureMismatch)
			mustFail("body truncated", header, body[:len(body)-1], at(tnum), ReasonSignatureMismatch)
		}
		mustFail("body extended", header, append(bytes.Clone(body), flip), at(tnum), ReasonSignatureMismatch)

		// t: another digit at one position. The value changes, so at now=t it
		// fails on the clock or, within tolerance, on the MAC; at now=t' the
		// clock is fine and the MAC must fail.
		p := int(pos % uint(len(T)))
		d := T[p] - '0'
		T2 := T[:p] + string('0'+(d+1+flip%9)%10) + T[p+1:]
		t2, _ := strconv.ParseInt(T2, 10, 64)
		h2 := "t=" + T2 + ",v=" + mac
		if diff := t2 - tnum; diff > fzTolerance {
			mustFail("t digit changed", h2, body, at(tnum), ReasonTimestampFuture)
		} else if -diff > fzTolerance {
			mustFail("t digit changed", h2, body, at(tnum), ReasonTimestampStale)
		} else {
			mustFail("t digit changed", h2, body, at(tnum), ReasonSignatureMismatch)
		}
		mustFail("t digit changed, now=t'", h2, body, at(t2), ReasonSignatureMismatch)
		// A leading zero keeps the value but changes the signed bytes.
		if len(T) < 10 {
			mustFail("t with leading zero", "t=0"+T+",v="+mac, body, at(tnum), ReasonSignatureMismatch)
		}

		// v: another hex digit at one position (either case) must fail; a
		// letter's case is not part of the MAC, so changing it must not.
		q := int(pos % 128)
		nib, _ := strconv.ParseUint(mac[q:q+1], 16, 8)
		c := strconv.FormatUint((nib+1+uint64(flip%15))%16, 16)
		if flip&0x80 != 0 {
			c = strings.ToUpper(c)
		}
		mustFail("v digit changed", "t="+T+",v="+mac[:q]+c+mac[q+1:], body, at(tnum), ReasonSignatureMismatch)
		if l := mac[q]; 'a' <= l && l <= 'f' {
			mustVerify("v letter upper-cased", "t="+T+",v="+mac[:q]+strings.ToUpper(mac[q:q+1])+mac[q+1:], body, at(tnum))
		}
		mustVerify("v upper-cased", "t="+T+",v="+strings.ToUpper(mac), body, at(tnum))
		// A wrong v next to the right one does not stop the match.
		bad := mac[:q] + c + mac[q+1:]
		if _, i, err := v.VerifySignature("t="+T+",v="+bad+",v="+mac, body, at(tnum)); err != nil || i != 1 {
			t.Fatalf("wrong v then right v: index %d, %v; want 1", i, err)
		}
	})
}

// ---------------------------------------------------------------------------
// 3. Payload parser, against encoding/json.

// fzPayload is what encoding/json makes of a payload.
type fzPayload struct {
	DeviceReturnID *string `json:"device_return_id"`
	State          *string `json:"state"`
	SerialNumber   *string `json:"serial_number"`
	TicketURL      *string `json:"ticket_url"`
	URL            *string `json:"url"`
	Test           *bool   `json:"test"`
}

var fzFieldNames = []string{"device_return_id", "state", "serial_number", "ticket_url", "url", "test"}

// fzTopKeys returns the decoded keys of a valid JSON object, in order, and
// whether "test" is given as null.
func fzTopKeys(body []byte) (keys []string, nullTest, ok bool) {
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, false, false
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return nil, false, false
		}
		keys = append(keys, tok.(string))
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return nil, false, false
		}
		nullTest = nullTest || tok == "test" && string(raw) == "null"
	}
	return keys, nullTest, true
}

// fzDepth is the deepest nesting of arrays and objects in a JSON text.
func fzDepth(b []byte) int {
	depth, deepest, inStr := 0, 0, false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inStr && c == '\\':
			i++
		case c == '"':
			inStr = !inStr
		case inStr:
		case c == '{' || c == '[':
			depth++
			deepest = max(deepest, depth)
		case c == '}' || c == ']':
			depth--
		}
	}
	return deepest
}

// fzLoneSurrogate reports whether a JSON string token (quotes included)
// holds a \uXXXX escape of a UTF-16 surrogate that is not a high one
// directly followed by an escaped low one. encoding/json decodes such an
// escape to U+FFFD, so the decoded string cannot show it.
func fzLoneSurrogate(tok []byte) bool {
	// One entry per character of the string: the escaped code unit, or -1
	// for anything else.
	var units []rune
	for i := 1; i < len(tok)-1; i++ {
		if tok[i] != '\\' {
			units = append(units, -1)
			continue
		}
		if tok[i+1] != 'u' {
			units = append(units, -1)
			i++
			continue
		}
		u, _ := strconv.ParseUint(string(tok[i+2:i+6]), 16, 16)
		units = append(units, rune(u))
		i += 5
	}
	for i := 0; i < len(units); i++ {
		if !utf16.IsSurrogate(units[i]) {
			continue
		}
		if i+1 < len(units) && utf16.DecodeRune(units[i], units[i+1]) != utf8.RuneError {
			i++ // a pair
			continue
		}
		return true
	}
	return false
}

// fzLoneSurrogateField reports whether a known string field of a valid
// JSON object, spelled exactly, holds a lone surrogate escape.
func fzLoneSurrogateField(body []byte) bool {
	var raw map[string]json.RawMessage
	if json.Unmarshal(body, &raw) != nil {
		return false
	}
	for _, k := range fzFieldNames[:5] { // the string fields
		if v := raw[k]; len(v) > 0 && v[0] == '"' && fzLoneSurrogate(v) {
			return true
		}
	}
	return false
}

// fzHeaderSafe: valid UTF-8 and no Unicode control character.
func fzHeaderSafe(s string) bool {
	if !utf8.ValidString(s) {
		return false
	}
	for _, r := range s {
		if unicode.IsControl(r) {
			return false
		}
	}
	return true
}

func fzOpt(s *string) (string, bool) {
	if s == nil {
		return "", false
	}
	return *s, true
}

// FuzzParsePayload compares ParsePayload with encoding/json.
//
// encoding/json matches struct fields case-insensitively (with Unicode
// folding: "ſtate" and "STATE" both fill State) and keeps the last of
// duplicate keys; the contract's parser is case-sensitive and rejects a
// known key given twice. So the decoded values are only compared when no
// top-level key folds to a known name without being exactly that name;
// exact duplicates (after unescaping) must be rejected. Conversely, valid
// UTF-8 JSON that encoding/json decodes into a good event (no folded or
// duplicate keys, nesting within maxDepth, test not null, strings fit for
// a header and without an escaped lone surrogate, which encoding/json
// turns into U+FFFD) must be accepted, and invalid JSON must fail as
// payload_invalid_json or payload_empty, never as a field error. Nesting
// deeper than maxDepth levels (the outermost value is level 1) must fail
// as payload_invalid_json.
func FuzzParsePayload(f *testing.F) {
	for _, s := range []string{
		`{"device_return_id":"dr_1","state":"complete"}`,
		`{"device_return_id":"dr_1","state":"failed","serial_number":"SN-1","test":true,"ticket_url":"https://t/1","url":"https://r/1","extra":{"a":[1,2.5e-3,-0,null,true,false,"\u00e9"]}}`,
		` {"state":"new_state","device_return_id":"x","serial_number":null,"ticket_url":null,"url":null,"test":false} `,
		`{"device_return_id":"a\u0000b","state":"complete"}`,
		`{"device_return_id":"a\u0085b","state":"complete"}`,
		`{"device_return_id":"\ud800","state":"\ud83d\ude00"}`,
		`{"device_return_id":"a","state":"b","state":"c"}`,
		`{"device_return_id":"a","state":"b","State":"c"}`,
		`{"device_return_id":"a","state":"b","ſtate":"c"}`,
		`{"device_return_id":"a","\u0073tate":"b"}`,
		`{"device_return_id":"a","state":1}`,
		`{"device_return_id":"a","state":"b","test":"true"}`,
		`{"device_return_id":"a","state":"b","test":null}`,
		`{"device_return_id":"","state":"b"}`,
		`{"state":"b"}`,
		`{"device_return_id":"a","state":"b",}`,
		`{"device_return_id":"a","state":"b"} x`,
		`{"device_return_id":"a","state":"b"`,
		`[{"device_return_id":"a","state":"b"}]`,
		`"str"`,
		`01`,
		"",
		" \t\r\n",
		"{\"device_return_id\":\"a\xff\",\"state\":\"b\"}",
		"{\"device_return_id\":\"a\",\"state\":\"b\",\"x\":\"\xff\"}",
		`{"x":` + strings.Repeat("[", 255) + strings.Repeat("]", 255) + `,"device_return_id":"a","state":"b"}`,
		`{"x":` + strings.Repeat("[", 256) + strings.Repeat("]", 256) + `,"device_return_id":"a","state":"b"}`,
		`{"x":` + strings.Repeat("[", 257) + strings.Repeat("]", 257) + `,"device_return_id":"a","state":"b"}`,
		strings.Repeat("[", 256) + strings.Repeat("]", 256),
		strings.Repeat("[", 257) + strings.Repeat("]", 257),
		`{"device_return_id":"a","state":"b","url":"\udc00\ud800"}`,
		`{"device_return_id":"a","state":"b","serial_number":"x\ud83d\ude00\ud83d"}`,
		`{"device_return_id":"a","state":"b","note":"\ud800"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		ev, err := ParsePayload(body)
		valid := json.Valid(body)
		tooDeep := fzDepth(body) > maxDepth
		reason := fzReason(err)

		if err != nil {
			if reason == "" || !strings.HasPrefix(string(reason), "payload_") {
				t.Fatalf("error %v has reason %q; want a payload_* reason", err, reason)
			}
			if !valid && reason != ReasonPayloadInvalidJSON && reason != ReasonPayloadEmpty {
				t.Fatalf("invalid JSON %q: reason %q, want %s or %s (%v)", body, reason, ReasonPayloadInvalidJSON, ReasonPayloadEmpty, err)
			}
			if valid && (reason == ReasonPayloadInvalidJSON && !tooDeep || reason == ReasonPayloadEmpty) {
				t.Fatalf("valid JSON %q rejected as %v", body, err)
			}
		} else if !valid {
			t.Fatalf("ParsePayload accepted invalid JSON %q: %+v", body, ev)
		}
		if valid && tooDeep && reason != ReasonPayloadInvalidJSON {
			t.Fatalf("JSON %d levels deep (limit %d) %q: got %+v, %v; want %s", fzDepth(body), maxDepth, body, ev, err, ReasonPayloadInvalidJSON)
		}
		if !valid {
			return
		}
		keys, nullTest, isObject := fzTopKeys(body)
		if !isObject {
			if err == nil {
				t.Fatalf("ParsePayload accepted a non-object %q", body)
			}
			return
		}
		folded, dup := false, false
		seen := map[string]bool{}
		for _, k := range keys {
			for _, n := range fzFieldNames {
				if k != n && strings.EqualFold(k, n) {
					folded = true
				}
			}
			if slices.Contains(fzFieldNames, k) {
				dup = dup || seen[k]
				seen[k] = true
			}
		}
		if dup && err == nil {
			t.Fatalf("ParsePayload accepted a known key given twice: %q -> %+v", body, ev)
		}

		var ref fzPayload
		refErr := json.Unmarshal(body, &ref)
		if err == nil {
			for _, s := range []string{ev.DeviceReturnID, ev.State, ev.SerialNumber, ev.TicketURL, ev.URL} {
				if !fzHeaderSafe(s) {
					t.Fatalf("accepted %q with a string unsafe for a header: %q", body, s)
				}
			}
			if ev.DeviceReturnID == "" || ev.State == "" {
				t.Fatalf("accepted %q without device_return_id or state: %+v", body, ev)
			}
			if fzLoneSurrogateField(body) {
				t.Fatalf("accepted %q, whose header-bound string holds a lone surrogate: %+v", body, ev)
			}
			if folded {
				return
			}
			if refErr != nil {
				t.Fatalf("accepted %q, which encoding/json cannot decode: %v", body, refErr)
			}
			sn, hasSN := fzOpt(ref.SerialNumber)
			tu, hasTU := fzOpt(ref.TicketURL)
			u, hasU := fzOpt(ref.URL)
			want := Event{
				DeviceReturnID: *ref.DeviceReturnID, State: *ref.State,
				SerialNumber: sn, HasSerialNumber: hasSN,
				Test:      ref.Test != nil && *ref.Test,
				TicketURL: tu, HasTicketURL: hasTU,
				URL: u, HasURL: hasU,
			}
			if ev != want {
				t.Fatalf("ParsePayload(%q) = %+v; encoding/json says %+v", body, ev, want)
			}
			return
		}
		// Rejected valid JSON: it must be for a reason encoding/json and the
		// contract agree on, unless key folding makes them disagree.
		if folded || dup || tooDeep || refErr != nil || !utf8.Valid(body) {
			return
		}
		// test may be absent, true or false; null is the wrong type.
		ok := ref.DeviceReturnID != nil && *ref.DeviceReturnID != "" && ref.State != nil && *ref.State != "" && !nullTest
		for _, p := range []*string{ref.DeviceReturnID, ref.State, ref.SerialNumber, ref.TicketURL, ref.URL} {
			if p != nil && !fzHeaderSafe(*p) {
				ok = false
			}
		}
		if ok && fzLoneSurrogateField(body) {
			if reason != ReasonPayloadBadString {
				t.Fatalf("ParsePayload(%q): %v; a lone surrogate is %s", body, err, ReasonPayloadBadString)
			}
			return
		}
		if ok {
			t.Fatalf("ParsePayload(%q) rejected a good payload: %v (encoding/json: %+v)", body, err, ref)
		}
	})
}

// ---------------------------------------------------------------------------
// 4. The whole handler.

const (
	fzSecret1 = "ssk_fuzz_primary_6b1f0c9e2d"
	fzSecret2 = "ssk_fuzz_secondary_a47d3e58"
	fzToken   = "tok_fuzz_Q7wZ&=+x"
	fzNow     = 1744831201
	fzMaxBody = 1024
)

// fzHandlers are provisioned once per process: signature only, token
// only, both.
type fzHandlerSet struct {
	h    [3]*Handler
	logs bytes.Buffer
}

func fzProvision(f *testing.F) *fzHandlerSet {
	set := &fzHandlerSet{}
	logger := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()),
		zapcore.AddSync(&set.logs), zapcore.DebugLevel))
	for mode := range set.h {
		h := &Handler{MaxBody: fzMaxBody, Tolerance: caddy.Duration(fzTolerance * time.Second)}
		if mode != 1 {
			h.Secrets = []string{fzSecret1, fzSecret2}
		}
		if mode != 0 {
			h.Token = fzToken
		}
		h.now = func() time.Time { return time.Unix(fzNow, 0) }
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		f.Cleanup(cancel)
		h.app = testApp(f)
		if err := h.Provision(ctx); err != nil {
			f.Fatalf("provision mode %d: %v", mode, err)
		}
		h.logger = logger // keep rejections off stderr; scanned per request
		set.h[mode] = h
	}
	return set
}

// fzBody counts reads, to prove a request was refused before reading.
type fzBody struct {
	r     io.Reader
	reads int
}

func (b *fzBody) Read(p []byte) (int, error) { b.reads++; return b.r.Read(p) }
func (b *fzBody) Close() error               { return nil }

// fzIsReReady: names starting x-reready- in any ASCII case, '_' and '.'
// counting as '-' (PHP, CGI and others fold them together).
func fzIsReReady(k string) bool {
	k = strings.NewReplacer("_", "-", ".", "-").Replace(k)
	return len(k) >= 10 && strings.EqualFold(k[:10], "x-reready-")
}

func fzHeaderName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("!#$%&'*+-.^_`|~", c) >= 0) {
			return false
		}
	}
	return true
}

// fzTokenOK checks ?token= as the contract words it: exactly one token
// parameter (after query-unescaping the key), whose unescaped value is the
// token; it also returns the other non-empty parameters in order.
func fzTokenOK(raw string) (bool, string) {
	var kept []string
	n, ok := 0, false
	for _, p := range strings.Split(raw, "&") {
		if p == "" {
			continue
		}
		k, v, _ := strings.Cut(p, "=")
		if uk, err := url.QueryUnescape(k); err == nil && uk == "token" {
			n++
			uv, err := url.QueryUnescape(v)
			ok = err == nil && uv == fzToken
			continue
		}
		kept = append(kept, p)
	}
	return n == 1 && ok, strings.Join(kept, "&")
}

// fzNonEmpty drops empty parameters ("a&&b" -> "a&b"); where a query's
// empty parameters go is not part of the contract.
func fzNonEmpty(q string) string {
	return strings.Join(slices.DeleteFunc(strings.Split(q, "&"), func(p string) bool { return p == "" }), "&")
}

// fzSigKey is the map key net/http files the signature header under.
var fzSigKey = http.CanonicalHeaderKey(SignatureHeader)

var fzMethods = []string{"GET", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "post"}

// FuzzHandler drives ServeHTTP with fuzzed body, signature header, query,
// method and one extra header name. method: low 4 bits 0-8 POST, else
// another method; high 4 bits, if not 0, put one of 15 spellings of the
// X-ReReady- prefix before extra. opts: bits 0-1 configuration (0 signature, 1 token, 2 both),
// bit 2 unknown length (chunked), bit 3 sign with the second secret, bit 4
// add Expect: 100-continue. When sign is set the signature header is
// replaced by a valid one for the body (with the fuzzed header appended
// as further items if it starts with a comma), so the fuzzer reaches the
// payload parser.
func FuzzHandler(f *testing.F) {
	good := `{"device_return_id":"dr_1","state":"complete","serial_number":"SN1","test":true,"ticket_url":null,"url":"https://x/1"}`
	q := "a=1&token=" + url.QueryEscape(fzToken) + "&b=2"
	f.Add([]byte(good), "", q, true, byte(0), byte(2), "X-ReReady-Forged")
	f.Add([]byte(good), "", q, true, byte(0), byte(0), "x_reready_test")
	f.Add([]byte(good), "", q, true, byte(0x40), byte(2), "Url")
	f.Add([]byte(good), "", "token="+url.QueryEscape(fzToken), false, byte(0), byte(1), "X-Other")
	f.Add([]byte(good), ",x=1", q, true, byte(0), byte(2|4|8|16), "X-Reready-Signature-512")
	f.Add([]byte(good), "", q+"&token=x", true, byte(0), byte(2), "")
	f.Add([]byte(good), "", "", true, byte(0), byte(2), "")
	f.Add([]byte(good), "", q, true, byte(12), byte(2), "")
	f.Add([]byte(good), "t=1744831201,v="+strings.Repeat("0", 128), q, false, byte(0), byte(0), "")
	f.Add([]byte(good), "t=1,v=x", q, false, byte(0), byte(0), "")
	f.Add([]byte(`{"device_return_id":"a\nb","state":"complete"}`), "", q, true, byte(0), byte(2), "")
	f.Add([]byte(`{"state":"complete"}`), "", q, true, byte(0), byte(0), "")
	f.Add([]byte(""), "", q, true, byte(0), byte(2), "")
	f.Add(bytes.Repeat([]byte("a"), fzMaxBody+1), "", q, true, byte(0), byte(2), "")
	f.Add(bytes.Repeat([]byte("a"), fzMaxBody+1), "", q, true, byte(0), byte(2|4), "")
	set := fzProvision(f)

	f.Fuzz(func(t *testing.T, body []byte, sigHeader, query string, sign bool, method, opts byte, extra string) {
		mode := int(opts&3) % 3
		h := set.h[mode]
		checksSig, checksTok := mode != 1, mode != 0
		unknownLen, secondKey, expect := opts&4 != 0, opts&8 != 0, opts&16 != 0
		m := http.MethodPost
		if method%16 >= 9 {
			m = fzMethods[int(method)%len(fzMethods)]
		}

		key := fzSecret1
		if secondKey {
			key = fzSecret2
		}
		if sign {
			h := "t=" + strconv.Itoa(fzNow) + ",v=" + hex.EncodeToString(fzMAC(key, strconv.Itoa(fzNow), body))
			if strings.HasPrefix(sigHeader, ",") {
				h += sigHeader
			}
			sigHeader = h
		}

		r := httptest.NewRequest(m, "http://gateway.test/webhooks/reready", nil)
		r.URL.RawQuery = query
		r.RequestURI = "/webhooks/reready?" + query
		src := &fzBody{r: bytes.NewReader(body)}
		r.Body = src
		r.ContentLength = int64(len(body))
		if unknownLen {
			r.ContentLength = -1
			r.TransferEncoding = []string{"chunked"}
		}
		if expect {
			r.Header.Set("Expect", "100-continue")
		}
		if sigHeader != "" || sign {
			r.Header.Set(SignatureHeader, sigHeader)
		}
		// Forged trusted headers, canonical or not, that must not survive.
		r.Header.Set("X-ReReady-State", "forged")
		r.Header.Set("X-ReReady-Verified", "hmac,token")
		r.Header.Set("X-ReReady-Timestamp", "1")
		r.Header["x-reready-serial-number"] = []string{"forged"}
		r.Header["X_Reready_Ticket_Url"] = []string{"forged"}
		if k := method >> 4; k != 0 {
			// An X-ReReady-* name as some stack may spell it: '-', '_' or
			// '.' after X and after ReReady, in mixed or upper case.
			seps := "-_."
			name := "X" + seps[k%3:k%3+1] + "ReReady" + seps[k/3%3:k/3%3+1]
			if k >= 9 {
				name = strings.ToUpper(name)
			}
			extra = name + extra
		}
		if fzHeaderName(extra) {
			r.Header[extra] = append(r.Header[extra], "forged")
		}
		repl := caddy.NewReplacer()
		ctx := context.WithValue(r.Context(), caddy.ReplacerCtxKey, repl)
		ctx = context.WithValue(ctx, caddyhttp.VarsCtxKey, map[string]any{})
		r = r.WithContext(ctx)

		// What the contract expects, worked out independently.
		sigVals := slices.Clone(r.Header[fzSigKey])
		sigOK := false
		var expectedMACs []string
		if len(sigVals) == 1 {
			if ref := fzParseSig(sigVals[0]); ref.ok {
				ts, _ := strconv.ParseInt(ref.t, 10, 64)
				for _, k := range []string{fzSecret1, fzSecret2} {
					want := fzMAC(k, ref.t, body)
					expectedMACs = append(expectedMACs, hex.EncodeToString(want))
					for _, v := range ref.v {
						got, _ := hex.DecodeString(v)
						if hmac.Equal(got, want) && ts >= fzNow-fzTolerance && ts <= fzNow+fzTolerance {
							sigOK = true
						}
					}
				}
			}
		}
		tokOK, strippedQuery := fzTokenOK(query)
		authOK := (!checksSig || sigOK) && (!checksTok || tokOK)
		ev, payloadErr := ParsePayload(body)
		wantStatus := 0
		switch {
		case m != http.MethodPost:
			wantStatus = http.StatusMethodNotAllowed
		case len(body) > fzMaxBody:
			wantStatus = http.StatusRequestEntityTooLarge
		case !authOK:
			wantStatus = http.StatusUnauthorized
		case payloadErr != nil:
			wantStatus = http.StatusBadRequest
		}

		set.logs.Reset()
		w := httptest.NewRecorder()
		called := false
		var forwarded io.Reader
		next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
			called = true
			forwarded = r.Body
			got, err := io.ReadAll(r.Body)
			if err != nil || !bytes.Equal(got, body) {
				t.Fatalf("forwarded body %q (err %v), want %q", got, err, body)
			}
			if r.ContentLength != int64(len(body)) || r.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
				t.Fatalf("forwarded ContentLength %d / header %q, body is %d bytes", r.ContentLength, r.Header.Get("Content-Length"), len(body))
			}
			if len(r.TransferEncoding) != 0 || r.Header.Get("Transfer-Encoding") != "" || r.Header.Get("Expect") != "" {
				t.Fatalf("forwarded with Transfer-Encoding %q / %q or Expect %q", r.TransferEncoding, r.Header.Get("Transfer-Encoding"), r.Header.Get("Expect"))
			}
			// Only the signature and the handler's own X-ReReady-* headers,
			// each once, with the verified values.
			verified := map[int]string{0: "hmac", 1: "token", 2: "hmac,token"}[mode]
			want := map[string]string{
				"X-Reready-State":            ev.State,
				"X-Reready-Device-Return-Id": ev.DeviceReturnID,
				"X-Reready-Test":             strconv.FormatBool(ev.Test),
				"X-Reready-Verified":         verified,
			}
			if ev.HasSerialNumber {
				want["X-Reready-Serial-Number"] = ev.SerialNumber
			}
			if ev.HasTicketURL {
				want["X-Reready-Ticket-Url"] = ev.TicketURL
			}
			if ev.HasURL {
				want["X-Reready-Url"] = ev.URL
			}
			if checksSig {
				want["X-Reready-Timestamp"] = fzParseSig(sigVals[0]).t
			}
			sawID := false
			for k, vs := range r.Header {
				if !fzIsReReady(k) {
					continue
				}
				if k == fzSigKey {
					if !slices.Equal(vs, sigVals) {
						t.Fatalf("signature header changed: %q, was %q", vs, sigVals)
					}
					continue
				}
				if k == "X-Reready-Delivery-Id" {
					// t-<32 hex>: the signed t, or the arrival time without a signature.
					prefix := `[0-9]+-`
					if checksSig {
						prefix = regexp.QuoteMeta(fzParseSig(sigVals[0]).t) + "-"
					}
					if len(vs) != 1 || !regexp.MustCompile(`^`+prefix+`[0-9a-f]{32}$`).MatchString(vs[0]) {
						t.Fatalf("upstream header %s = %q, want one <t>-<32 hex>", k, vs)
					}
					sawID = true
					continue
				}
				wv, ok := want[k]
				if !ok {
					t.Fatalf("client header %s: %q reached the upstream", k, vs)
				}
				if len(vs) != 1 || vs[0] != wv {
					t.Fatalf("upstream header %s = %q, want [%q]", k, vs, wv)
				}
				delete(want, k)
			}
			if len(want) != 0 || !sawID {
				t.Fatalf("upstream headers missing: %v (delivery id seen: %t)", want, sawID)
			}
			if checksTok {
				path, q, _ := strings.Cut(r.RequestURI, "?")
				if fzNonEmpty(r.URL.RawQuery) != strippedQuery || path != "/webhooks/reready" || q != r.URL.RawQuery {
					t.Fatalf("forwarded query %q / URI %q; want the parameters %q", r.URL.RawQuery, r.RequestURI, strippedQuery)
				}
			}
			if !checksTok && r.URL.RawQuery != query {
				t.Fatalf("forwarded query %q; want it untouched: %q", r.URL.RawQuery, query)
			}
			if got := repl.ReplaceAll("{http.reready.state}|{http.reready.device_return_id}|{http.reready.test}|{http.reready.verified}", "?"); got != ev.State+"|"+ev.DeviceReturnID+"|"+strconv.FormatBool(ev.Test)+"|"+verified {
				t.Fatalf("placeholders: %q", got)
			}
			// Upstream declines, so no replay memory could keep state
			// between fuzz inputs.
			w.WriteHeader(http.StatusServiceUnavailable)
			return nil
		})

		err := h.ServeHTTP(w, r, next)

		if called {
			if wantStatus != 0 {
				t.Fatalf("forwarded, want status %d (method %s, sig ok %v, token ok %v, payload %v)", wantStatus, m, sigOK, tokOK, payloadErr)
			}
			if err != nil {
				t.Fatalf("forwarded but ServeHTTP returned %v", err)
			}
			if n, err := forwarded.Read(make([]byte, 1)); n != 0 || err == nil {
				t.Fatalf("forwarded body still readable after ServeHTTP returned: %d, %v", n, err)
			}
		} else {
			var he caddyhttp.HandlerError
			if !errors.As(err, &he) {
				t.Fatalf("not forwarded, error %v (%T) is not a caddyhttp.HandlerError", err, err)
			}
			switch he.StatusCode {
			case 400, 401, 405, 408, 413:
			default:
				t.Fatalf("status %d is not one of the contract's", he.StatusCode)
			}
			if he.StatusCode != wantStatus {
				t.Fatalf("status %d (%v), want %d (method %s, sig ok %v, token ok %v, payload %v)", he.StatusCode, err, wantStatus, m, sigOK, tokOK, payloadErr)
			}
			if w.Body.Len() != 0 || w.Code != http.StatusOK { // recorder default: nothing written
				t.Fatalf("rejection wrote a response itself: %d %q", w.Code, w.Body.String())
			}
			if wantStatus == http.StatusMethodNotAllowed && w.Header().Get("Allow") != http.MethodPost {
				t.Fatalf("405 with Allow %q", w.Header().Get("Allow"))
			}
			if closes := w.Header().Get("Connection") == "close"; closes != (wantStatus == 405 || wantStatus == 408 || wantStatus == 413) {
				t.Fatalf("status %d with Connection %q", wantStatus, w.Header().Get("Connection"))
			}
			if (wantStatus == 405 || wantStatus == 413 && !unknownLen) && src.reads != 0 {
				t.Fatalf("status %d after %d body reads; want none", wantStatus, src.reads)
			}
			if n := strings.Count(set.logs.String(), `"reason":`); n != 1 {
				t.Fatalf("rejection logged %d times:\n%s", n, set.logs.String())
			}
		}
		// No response, error or log line holds a secret, the token or an
		// expected MAC (unless the client sent that text itself).
		texts := set.logs.String() + "\n" + strings.ToLower(set.logs.String())
		if err != nil {
			texts += "\n" + err.Error()
		}
		texts += "\n" + w.Body.String()
		forbidden := append([]string{fzSecret1, fzSecret2, fzToken, url.QueryEscape(fzToken)}, expectedMACs...)
		for _, s := range forbidden {
			if strings.Contains(texts, s) && !strings.Contains(strings.ToLower(sigHeader+query+extra), strings.ToLower(s)) {
				t.Fatalf("%q leaked:\n%s", s, texts)
			}
		}
	})
}
