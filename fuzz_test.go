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
	"encoding/hex"
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

	"github.com/reready-verify/caddy-reready-verify/internal/verify"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest"
)

// ---------------------------------------------------------------------------
// 4. The whole handler.

const (
	fzSecret1   = "ssk_fuzz_primary_6b1f0c9e2d"
	fzSecret2   = "ssk_fuzz_secondary_a47d3e58"
	fzToken     = "tok_fuzz_Q7wZ&=+x"
	fzNow       = 1744831201
	fzMaxBody   = 1024
	fzTolerance = 300 // seconds
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
var fzSigKey = http.CanonicalHeaderKey(verify.SignatureHeader)

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
			h := "t=" + strconv.Itoa(fzNow) + ",v=" + hex.EncodeToString(rrtest.MAC(key, strconv.Itoa(fzNow), body))
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
			r.Header.Set(verify.SignatureHeader, sigHeader)
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
			if ref := rrtest.ParseSig(sigVals[0]); ref.OK {
				ts, _ := strconv.ParseInt(ref.T, 10, 64)
				for _, k := range []string{fzSecret1, fzSecret2} {
					want := rrtest.MAC(k, ref.T, body)
					expectedMACs = append(expectedMACs, hex.EncodeToString(want))
					for _, v := range ref.V {
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
		ev, payloadErr := verify.ParsePayload(body)
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
				want["X-Reready-Timestamp"] = rrtest.ParseSig(sigVals[0]).T
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
						prefix = regexp.QuoteMeta(rrtest.ParseSig(sigVals[0]).T) + "-"
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
