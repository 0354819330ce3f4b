package verify

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

const testSecret = "ssk_test_4f9a1c2b7d3e8f60"

// RFC 4231 test cases 1 and 2 for HMAC-SHA-512, through the same pooled
// HMAC state the verifier uses.
func TestHMACSHA512RFC4231(t *testing.T) {
	tests := []struct {
		name, key, data, want string
	}{
		{"case 1", strings.Repeat("\x0b", 20), "Hi There",
			"87aa7cdea5ef619d4ff0b4241a1d6cb02379f4e2ce4ec2787ad0b30545e17cde" +
				"daa833b7d6b8a702038b274eaea3f4e4be9d914eeb61f1702e696c203a126854"},
		{"case 2", "Jefe", "what do ya want for nothing?",
			"164b7a7bfcf819e2e395fbe73b56e0a387bd64222e831fd610270cd7ea250554" +
				"9758bf75c05a994a6d034f65f8f0e6fdcaeab1a34d4a6b4b636e070a38bce737"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			k := newHMACKey(tc.key)
			for i := 0; i < 2; i++ { // the second pass reuses the pooled, Reset state
				m := k.pool.Get().(*macState)
				m.h.Write([]byte(tc.data))
				if got := hex.EncodeToString(m.h.Sum(nil)); got != tc.want {
					t.Fatalf("pass %d: got %s, want %s", i, got, tc.want)
				}
				m.h.Reset()
				k.pool.Put(m)
			}
		})
	}
}

type vector struct {
	secret string
	t      string
	body   []byte
	v      string
}

// loadVectors reads testdata/vectors.txt, made by openssl and Ruby.
func loadVectors(t *testing.T) []vector {
	t.Helper()
	f, err := os.Open("testdata/vectors.txt")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []vector
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		fs := strings.Fields(line)
		if len(fs) != 4 {
			t.Fatalf("bad vector line %q", line)
		}
		body, err := os.ReadFile(filepath.Join("testdata", fs[2]))
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, vector{fs[0], fs[1], body, fs[3]})
	}
	if len(out) == 0 {
		t.Fatal("no vectors")
	}
	return out
}

func TestKnownAnswerVectors(t *testing.T) {
	for _, vec := range loadVectors(t) {
		t.Run(vec.t, func(t *testing.T) {
			if got := MAC(vec.secret, vec.t, vec.body); got != vec.v {
				t.Fatalf("MAC = %s, want %s", got, vec.v)
			}
			ts, _ := strconv.ParseInt(vec.t, 10, 64)
			v, err := New([]string{vec.secret}, "", 5*time.Minute)
			if err != nil {
				t.Fatal(err)
			}
			for _, hdr := range []string{
				"t=" + vec.t + ",v=" + vec.v,
				"t=" + vec.t + ",v=" + strings.ToUpper(vec.v),
				" v = " + vec.v + " , t = " + vec.t + " ",
			} {
				if _, _, err := v.VerifySignature(hdr, vec.body, time.Unix(ts, 0)); err != nil {
					t.Errorf("%q: %v", hdr, err)
				}
			}
		})
	}
}

func TestParseSignatureHeader(t *testing.T) {
	v1 := strings.Repeat("ab", 64)
	v2 := strings.Repeat("CD", 64)
	tests := []struct {
		name   string
		header string
		wantT  string
		wantV  int
		reason Reason // "" means accepted
	}{
		{"vendor shape", "t=1744831201,v=" + v1, "1744831201", 1, ""},
		{"v first", "v=" + v1 + ",t=1", "1", 1, ""},
		{"spaces around items", "  t=1744831201 ,\tv=" + v1 + "  ", "1744831201", 1, ""},
		{"upper-case hex", "t=5,v=" + v2, "5", 1, ""},
		{"two v", "t=5,v=" + v1 + ",v=" + v2, "5", 2, ""},
		{"unknown key ignored", "t=5,v0=zzz,v=" + v1 + ",scheme=x", "5", 1, ""},
		{"ten digits", "t=9999999999,v=" + v1, "9999999999", 1, ""},
		{"leading zeros", "t=0000000001,v=" + v1, "0000000001", 1, ""},
		{"empty header", "", "", 0, ReasonSignatureMalformed},
		{"only spaces", "   ", "", 0, ReasonSignatureMalformed},
		{"no t", "v=" + v1, "", 0, ReasonSignatureMalformed},
		{"no v", "t=5", "", 0, ReasonSignatureMalformed},
		{"two t", "t=5,t=5,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"empty item", "t=5,,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"trailing comma", "t=5,v=" + v1 + ",", "", 0, ReasonSignatureMalformed},
		{"leading comma", ",t=5,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"item without =", "t=5,v=" + v1 + ",junk", "", 0, ReasonSignatureMalformed},
		{"empty key", "t=5,=x,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t empty", "t=,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t eleven digits", "t=17448312010,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t signed", "t=+5,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t negative", "t=-5,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t fractional", "t=5.0,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t inner space", "t=17 44,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"t unicode digit", "t=٥,v=" + v1, "", 0, ReasonSignatureMalformed},
		{"v 127 chars", "t=5,v=" + v1[:127], "", 0, ReasonSignatureMalformed},
		{"v 129 chars", "t=5,v=" + v1 + "a", "", 0, ReasonSignatureMalformed},
		{"v not hex", "t=5,v=" + strings.Repeat("g", 128), "", 0, ReasonSignatureMalformed},
		{"v empty", "t=5,v=", "", 0, ReasonSignatureMalformed},
		{"one bad v among good", "t=5,v=" + v1 + ",v=xyz", "", 0, ReasonSignatureMalformed},
		{"key case matters", "T=5,V=" + v1, "", 0, ReasonSignatureMalformed},
		{"semicolon separated", "t=5;v=" + v1, "", 0, ReasonSignatureMalformed},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sig, err := ParseSignatureHeader(tc.header)
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("reason = %q (err %v), want %q", got, err, tc.reason)
			}
			if tc.reason != "" {
				return
			}
			if sig.T != tc.wantT || len(sig.V) != tc.wantV {
				t.Fatalf("got t=%q and %d v, want t=%q and %d v", sig.T, len(sig.V), tc.wantT, tc.wantV)
			}
			// An accepted header re-parses to the same items.
			again, err := ParseSignatureHeader(sig.String())
			if err != nil || again.T != sig.T || strings.Join(again.V, ",") != strings.Join(sig.V, ",") {
				t.Fatalf("re-parse of %q: %+v, %v", sig.String(), again, err)
			}
		})
	}
}

func TestParseSignatureHeaderMessagesAreClipped(t *testing.T) {
	long := strings.Repeat("9", 5000)
	_, err := ParseSignatureHeader("t=" + long + ",v=x")
	if err == nil || len(err.Error()) > 200 {
		t.Fatalf("error should be short, got %d bytes: %v", len(err.Error()), err)
	}
}

func TestVerifySignature(t *testing.T) {
	const ts = 1744831201
	body := []byte(`{"device_return_id":"x","state":"complete"}`)
	now := time.Unix(ts, 0)
	good := Sign(testSecret, now, body)
	other := Sign("ssk_other", now, body)
	v, err := New([]string{"ssk_first", testSecret}, "", 5*time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	otherMAC := strings.TrimPrefix(other, "t=1744831201,v=")
	goodMAC := strings.TrimPrefix(good, "t=1744831201,v=")
	tests := []struct {
		name   string
		header string
		body   []byte
		now    time.Time
		reason Reason
		match  int
	}{
		{"second secret matches", good, body, now, "", 0},
		{"second v matches", "t=1744831201,v=" + otherMAC + ",v=" + goodMAC, body, now, "", 1},
		{"wrong secret", other, body, now, ReasonSignatureMismatch, -1},
		{"tampered body", good, append([]byte(nil), append(body, ' ')...), now, ReasonSignatureMismatch, -1},
		{"tampered t", "t=1744831202,v=" + goodMAC, body, now, ReasonSignatureMismatch, -1},
		{"tolerance edge past", good, body, now.Add(5 * time.Minute), "", 0},
		{"tolerance edge past, sub-second", good, body, now.Add(5*time.Minute + 999*time.Millisecond), "", 0},
		{"one second stale", good, body, now.Add(5*time.Minute + time.Second), ReasonTimestampStale, -1},
		{"tolerance edge future", good, body, now.Add(-5 * time.Minute), "", 0},
		{"one second future", good, body, now.Add(-5*time.Minute - time.Second), ReasonTimestampFuture, -1},
		{"t zero", "t=0,v=" + goodMAC, body, now, ReasonTimestampStale, -1},
		{"t far future", "t=9999999999,v=" + goodMAC, body, now, ReasonTimestampFuture, -1},
		{"stale checked before MAC", "t=1,v=" + otherMAC, body, now, ReasonTimestampStale, -1},
		{"malformed", "t=1744831201", body, now, ReasonSignatureMalformed, -1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sig, i, err := v.VerifySignature(tc.header, tc.body, tc.now)
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("reason = %q (%v), want %q", got, err, tc.reason)
			}
			if i != tc.match {
				t.Fatalf("matched v %d, want %d", i, tc.match)
			}
			if tc.reason == "" && sig.T != "1744831201" {
				t.Fatalf("t = %q", sig.T)
			}
			if err != nil && (strings.Contains(err.Error(), goodMAC) || strings.Contains(err.Error(), testSecret)) {
				t.Fatalf("error leaks the MAC or secret: %v", err)
			}
		})
	}
}

func TestNewVerifierErrors(t *testing.T) {
	tests := []struct {
		name    string
		secrets []string
		token   string
		tol     time.Duration
		want    string
	}{
		{"nothing", nil, "", time.Minute, "at least one"},
		{"empty secret", []string{"ssk_a", ""}, "", time.Minute, "secret 2 is empty"},
		{"zero tolerance", []string{"ssk_a"}, "", 0, "tolerance"},
		{"negative tolerance", []string{"ssk_a"}, "", -time.Second, "tolerance"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := New(tc.secrets, tc.token, tc.tol)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("err = %v, want it to mention %q", err, tc.want)
			}
		})
	}
}

func TestCheckToken(t *testing.T) {
	v, err := New(nil, "s3cr3t/tok+en", time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	const enc = "s3cr3t%2Ftok%2Ben"
	tests := []struct {
		name     string
		query    string
		stripped string
		reason   Reason
	}{
		{"only token", "token=" + enc, "", ""},
		{"others kept in order", "b=2&token=" + enc + "&a=1&c=%20x", "b=2&a=1&c=%20x", ""},
		{"token first", "token=" + enc + "&z=9", "z=9", ""},
		{"raw slash accepted", "token=s3cr3t/tok%2Ben&x=1", "x=1", ""},
		{"encoded key", "tok%65n=" + enc + "&x=1", "x=1", ""},
		{"missing", "x=1", "x=1", ReasonTokenMissing},
		{"empty query", "", "", ReasonTokenMissing},
		{"duplicated", "token=" + enc + "&token=" + enc, "", ReasonTokenDuplicate},
		{"duplicated with other", "token=" + enc + "&x=1&token=nope", "x=1", ReasonTokenDuplicate},
		{"wrong", "token=nope", "", ReasonTokenMismatch},
		{"plus is a space", "token=s3cr3t%2Ftok+en", "", ReasonTokenMismatch},
		{"prefix", "token=s3cr3t", "", ReasonTokenMismatch},
		{"longer", "token=" + enc + "x", "", ReasonTokenMismatch},
		{"empty value", "token=", "", ReasonTokenMismatch},
		{"no value", "token", "", ReasonTokenMismatch},
		{"bad encoding", "token=%zz", "", ReasonTokenMismatch},
		{"other name", "tokens=" + enc, "tokens=" + enc, ReasonTokenMissing},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			stripped, err := v.CheckToken(tc.query)
			if got := ReasonOf(err); got != tc.reason {
				t.Fatalf("reason = %q (%v), want %q", got, err, tc.reason)
			}
			if stripped != tc.stripped {
				t.Fatalf("stripped = %q, want %q", stripped, tc.stripped)
			}
			if err != nil && strings.Contains(err.Error(), "s3cr3t") {
				t.Fatalf("error leaks the token: %v", err)
			}
		})
	}
}

func TestSignRoundTrip(t *testing.T) {
	body := []byte(`{"state":"failed"}`)
	now := time.Unix(1700000000, 0)
	hdr := Sign(testSecret, now, body)
	if !strings.HasPrefix(hdr, "t=1700000000,v=") || len(hdr) != len("t=1700000000,v=")+128 {
		t.Fatalf("Sign = %q", hdr)
	}
	v, _ := New([]string{testSecret}, "", time.Minute)
	if _, _, err := v.VerifySignature(hdr, body, now); err != nil {
		t.Fatal(err)
	}
}

// TestHexTable holds the hex table to encoding/hex for every byte, in
// both positions of a pair.
func TestHexTable(t *testing.T) {
	for c := 0; c < 256; c++ {
		_, err := hex.DecodeString(string([]byte{byte(c), '0'}))
		if got, want := isHex(string([]byte{byte(c)})), err == nil; got != want {
			t.Errorf("isHex(%q) = %v, encoding/hex says %v", byte(c), got, want)
		}
		if v, ok := fromHex(byte(c)); ok != (err == nil) || ok && v != mustHex(t, c) {
			t.Errorf("fromHex(%q) = %d, %v", byte(c), v, ok)
		}
		for _, pair := range [][2]byte{{byte(c), 'a'}, {'F', byte(c)}} {
			s := strings.Repeat("00", MACSize-1) + string(pair[:])
			var out [MACSize]byte
			want, werr := hex.DecodeString(s)
			if ok := decodeMAC(&out, s); ok != (werr == nil) || ok && !bytes.Equal(out[:], want) {
				t.Errorf("decodeMAC(...%q) = %v, %x; encoding/hex: %x, %v", pair, ok, out[MACSize-1], want, werr)
			}
		}
	}
}

func mustHex(t *testing.T, c int) byte {
	b, err := hex.DecodeString("0" + string([]byte{byte(c)}))
	if err != nil {
		t.Fatal(err)
	}
	return b[0]
}
