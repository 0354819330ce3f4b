package verify

// Go native fuzz targets of the pure core. Without -fuzz they run their
// f.Add seeds and the corpus under testdata/fuzz/<Target>/ as ordinary
// tests (well under a second); scripts/fuzz.sh fuzzes each for a bounded
// time. The whole handler's target is in the root package.
//
// The properties are checked against independent reference code written
// here (a second header parser, crypto/hmac directly, encoding/json), not
// against the package's own helpers, so a shared mistake cannot hide. Every
// helper is prefixed fz to stay clear of the package's other test files.

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"errors"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest"
)

// The accepted t and v values, as the contract words them.
var (
	fzT = regexp.MustCompile(`^[0-9]{1,10}$`)
	fzV = regexp.MustCompile(`^[0-9a-fA-F]{128}$`)
)

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
		ref := rrtest.ParseSig(h)
		if err != nil {
			if r := fzReason(err); r != ReasonSignatureMalformed {
				t.Fatalf("ParseSignatureHeader(%q): reason %q, want %q (err %v)", h, r, ReasonSignatureMalformed, err)
			}
			if ref.OK {
				t.Fatalf("ParseSignatureHeader(%q) rejected a header the contract accepts: %v", h, err)
			}
			return
		}
		if !ref.OK {
			t.Fatalf("ParseSignatureHeader(%q) accepted a header the contract rejects: %+v", h, sig)
		}
		// Exactly one t of 1-10 digits, at least one v of 128 hex characters,
		// and the items are the ones the reference parser saw, in order.
		if !fzT.MatchString(sig.T) {
			t.Fatalf("accepted T %q is not 1-10 digits", sig.T)
		}
		if want, _ := strconv.ParseInt(sig.T, 10, 64); sig.Timestamp != want {
			t.Fatalf("Timestamp %d, want %d (T %q)", sig.Timestamp, want, sig.T)
		}
		if len(sig.V) == 0 {
			t.Fatalf("accepted with no v: %q", h)
		}
		for _, v := range sig.V {
			if !fzV.MatchString(v) {
				t.Fatalf("accepted v %q is not 128 hex characters", v)
			}
		}
		if sig.T != ref.T || !slices.Equal(sig.V, ref.V) {
			t.Fatalf("parsed %q as T=%q V=%q; reference T=%q V=%q", h, sig.T, sig.V, ref.T, ref.V)
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
		v, err := New([]string{secret}, "", fzTolerance*time.Second)
		if err != nil {
			t.Fatalf("NewVerifier: %v", err)
		}
		at := func(sec int64) time.Time { return time.Unix(sec, 0) }
		tnum := int64(ts)
		T := strconv.FormatInt(tnum, 10)
		header := Sign(secret, at(tnum), body)

		// Sign agrees with crypto/hmac used directly.
		wantMAC := rrtest.MAC(secret, T, body)
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
		v2, _ := New([]string{secret + "_other", secret}, "", fzTolerance*time.Second)
		if _, i, err := v2.VerifySignature(header, body, at(tnum)); err != nil || i != 0 {
			t.Fatalf("second of two secrets: index %d, %v", i, err)
		}
		v3, _ := New([]string{secret + "_other"}, "", fzTolerance*time.Second)
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
