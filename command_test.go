package rereadyverify

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/reready-verify/caddy-reready-verify/internal/verify"
	"github.com/spf13/cobra"
)

// Names here start with cmd so they cannot clash with other test files.

const (
	cmdSecret      = "ssk_cmd_9Zq7Lw2Xv5Rt8Yp3+/="
	cmdOtherSecret = "ssk_cmd_other_0000000000"
	cmdToken       = "tok/+= &secret"
	// cmdVendorBody is the example payload from ReReady's documentation.
	cmdVendorBody = `{ "device_return_id": "e025d043-c41d-4167-8bd3-24cc66345696", "serial_number": null, "state": "pending_return_shipment", "test": false, "ticket_url": null, "url": "https://www.reready.co/device_returns/e025d043-c41d-4167-8bd3-24cc66345696" }`
)

var (
	cmdHexMAC = regexp.MustCompile(`^[0-9a-f]{128}$`)
	cmdUUIDv4 = regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`)
)

// cmdSigner is an HMAC-SHA512 implementation independent of this package,
// run as its own program: it reads the data on stdin, takes the key as an
// argument and prints the hex digest.
type cmdSigner struct {
	name string
	argv func(key string) []string
}

var cmdSigners = []cmdSigner{
	{"openssl", func(key string) []string {
		return []string{"openssl", "dgst", "-sha512", "-hmac", key}
	}},
	{"python", func(key string) []string {
		return []string{"python3", "-c",
			"import hashlib, hmac, sys; sys.stdout.write(hmac.new(sys.argv[1].encode(), sys.stdin.buffer.read(), hashlib.sha512).hexdigest())",
			key}
	}},
}

var cmdOpenSSL, cmdPython = cmdSigners[0], cmdSigners[1]

// cmdExternalMAC returns hex(HMAC-SHA512(key, ts + "." + body)) computed by s.
// A missing signer fails the test: scripts/deps.sh installs them (openssl
// and python3 here; Ruby too, with the fullsuite tag).
func cmdExternalMAC(t *testing.T, s cmdSigner, key, ts string, body []byte) string {
	t.Helper()
	argv := s.argv(key)
	c := exec.Command(argv[0], argv[1:]...)
	c.Stdin = bytes.NewReader(append([]byte(ts+"."), body...))
	var stderr bytes.Buffer
	c.Stderr = &stderr
	out, err := c.Output()
	if err != nil {
		t.Fatalf("independent signer %s (%s) failed: %v %s\n(scripts/deps.sh installs python3, ruby and openssl)",
			s.name, argv[0], err, stderr.String())
	}
	mac := strings.TrimSpace(string(out))
	if i := strings.LastIndex(mac, "= "); i >= 0 { // openssl: "SHA2-512(stdin)= <hex>"
		mac = mac[i+2:]
	}
	if !cmdHexMAC.MatchString(mac) {
		t.Fatalf("independent signer %s printed %q; want 128 lowercase hex characters", s.name, out)
	}
	return mac
}

// cmdSetClock fixes the commands' clock for the test.
func cmdSetClock(t *testing.T, now time.Time) {
	t.Helper()
	old := cmdNow
	cmdNow = func() time.Time { return now }
	t.Cleanup(func() { cmdNow = old })
}

// cmdNoLeak fails if any output holds a secret, the token or an expected MAC.
func cmdNoLeak(t *testing.T, texts map[string]string, forbidden ...string) {
	t.Helper()
	for name, text := range texts {
		for _, f := range forbidden {
			if f != "" && strings.Contains(text, f) {
				t.Errorf("%s leaks %q:\n%s", name, f, text)
			}
		}
	}
}

func TestCommandSignMatchesIndependentSigners(t *testing.T) {
	t.Setenv(envSecret, "")
	tests := []struct {
		name string
		ts   string
		body string
	}{
		{"vendor example", "1744831201", cmdVendorBody},
		{"compact", "1744831201", `{"device_return_id":"x","state":"complete"}`},
		{"trailing newline", "1744831201", cmdVendorBody + "\n"},
		{"unicode", "0", `{"serial_number":"Zürich ☃ \u2028"}`},
		{"binary", "9999999999", "\x00\xff\r\n\t\"."},
	}
	for _, s := range cmdSigners {
		for _, tt := range tests {
			t.Run(s.name+"/"+tt.name, func(t *testing.T) {
				var out, errOut bytes.Buffer
				err := runSign(signOptions{Secret: cmdSecret, Timestamp: tt.ts}, strings.NewReader(tt.body), &out, &errOut)
				if err != nil {
					t.Fatalf("runSign: %v", err)
				}
				want := "t=" + tt.ts + ",v=" + cmdExternalMAC(t, s, cmdSecret, tt.ts, []byte(tt.body)) + "\n"
				if out.String() != want {
					t.Errorf("sign printed\n%q\nwant (%s)\n%q", out.String(), s.name, want)
				}
				if errOut.Len() != 0 {
					t.Errorf("unexpected stderr: %q", errOut.String())
				}
			})
		}
	}

	t.Run("file", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "body.json")
		if err := os.WriteFile(path, []byte(cmdVendorBody+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		for _, file := range []string{path, "-"} {
			var out bytes.Buffer
			// With --file -, the body is stdin; otherwise stdin is ignored.
			stdin := strings.NewReader("ignored")
			if file == "-" {
				stdin = strings.NewReader(cmdVendorBody + "\n")
			}
			if err := runSign(signOptions{Secret: cmdSecret, Timestamp: "1744831201", File: file}, stdin, &out, io.Discard); err != nil {
				t.Fatalf("runSign --file %s: %v", file, err)
			}
			want := "t=1744831201,v=" + cmdExternalMAC(t, cmdPython, cmdSecret, "1744831201", []byte(cmdVendorBody+"\n")) + "\n"
			if out.String() != want {
				t.Errorf("--file %s: got %q, want %q", file, out.String(), want)
			}
		}
	})

	t.Run("timestamp defaults to now", func(t *testing.T) {
		cmdSetClock(t, time.Unix(1744831999, 999_000_000))
		var out bytes.Buffer
		if err := runSign(signOptions{Secret: cmdSecret}, strings.NewReader(cmdVendorBody), &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		want := "t=1744831999,v=" + cmdExternalMAC(t, cmdPython, cmdSecret, "1744831999", []byte(cmdVendorBody)) + "\n"
		if out.String() != want {
			t.Errorf("got %q, want %q", out.String(), want)
		}
	})
}

func TestCommandSignErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "missing.json")
	tests := []struct {
		name    string
		opts    signOptions
		wantErr string
	}{
		{"letters", signOptions{Secret: cmdSecret, Timestamp: "abc"}, `invalid --timestamp "abc": want unix seconds, 1-10 digits`},
		{"negative", signOptions{Secret: cmdSecret, Timestamp: "-1"}, `invalid --timestamp "-1": want unix seconds, 1-10 digits`},
		{"plus sign", signOptions{Secret: cmdSecret, Timestamp: "+5"}, `invalid --timestamp "+5": want unix seconds, 1-10 digits`},
		{"fraction", signOptions{Secret: cmdSecret, Timestamp: "1744831201.5"}, `invalid --timestamp "1744831201.5": want unix seconds, 1-10 digits`},
		{"eleven digits", signOptions{Secret: cmdSecret, Timestamp: "10000000000"}, `invalid --timestamp "10000000000": want unix seconds, 1-10 digits`},
		{"milliseconds", signOptions{Secret: cmdSecret, Timestamp: "1744831201000"}, `invalid --timestamp "1744831201000": want unix seconds, 1-10 digits`},
		{"no secret", signOptions{Timestamp: "1"}, "no signing secret: pass --secret or set $" + envSecret},
		{"missing file", signOptions{Secret: cmdSecret, File: missing}, fmt.Sprintf("invalid --file %q: no such file or directory", missing)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envSecret, "")
			var out, errOut bytes.Buffer
			err := runSign(tt.opts, strings.NewReader("{}"), &out, &errOut)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q on failure", out.String())
			}
			cmdNoLeak(t, map[string]string{"error": err.Error(), "stderr": errOut.String()}, cmdSecret)
		})
	}
}

func TestCommandSecretFromEnvironment(t *testing.T) {
	t.Run("sign", func(t *testing.T) {
		t.Setenv(envSecret, cmdSecret)
		var out bytes.Buffer
		if err := runSign(signOptions{Timestamp: "1744831201"}, strings.NewReader(cmdVendorBody), &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		want := "t=1744831201,v=" + cmdExternalMAC(t, cmdPython, cmdSecret, "1744831201", []byte(cmdVendorBody)) + "\n"
		if out.String() != want {
			t.Errorf("got %q, want %q", out.String(), want)
		}
	})
	t.Run("flag wins over environment", func(t *testing.T) {
		t.Setenv(envSecret, cmdOtherSecret)
		var out bytes.Buffer
		if err := runSign(signOptions{Secret: cmdSecret, Timestamp: "1744831201"}, strings.NewReader(cmdVendorBody), &out, io.Discard); err != nil {
			t.Fatal(err)
		}
		want := "t=1744831201,v=" + cmdExternalMAC(t, cmdPython, cmdSecret, "1744831201", []byte(cmdVendorBody)) + "\n"
		if out.String() != want {
			t.Errorf("got %q, want %q", out.String(), want)
		}
	})
	t.Run("verify", func(t *testing.T) {
		t.Setenv(envSecret, cmdSecret)
		cmdSetClock(t, time.Unix(1744831201, 0))
		header := "t=1744831201,v=" + cmdExternalMAC(t, cmdPython, cmdSecret, "1744831201", []byte(cmdVendorBody))
		var out bytes.Buffer
		if err := runVerify(verifyOptions{Header: header}, strings.NewReader(cmdVendorBody), &out, io.Discard); err != nil {
			t.Fatalf("runVerify: %v\n%s", err, out.String())
		}
	})
	t.Run("secret without ssk_ prefix warns", func(t *testing.T) {
		const bare = "cmd_no_prefix_secret"
		t.Setenv(envSecret, "")
		var out, errOut bytes.Buffer
		if err := runSign(signOptions{Secret: bare, Timestamp: "1"}, strings.NewReader("{}"), &out, &errOut); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(errOut.String(), "warning: the secret does not start with ssk_") {
			t.Errorf("stderr %q lacks the ssk_ warning", errOut.String())
		}
		cmdNoLeak(t, map[string]string{"stdout": out.String(), "stderr": errOut.String()}, bare)
	})
}

func TestCommandVerify(t *testing.T) {
	t.Setenv(envSecret, "")
	const now = 1744831500
	cmdSetClock(t, time.Unix(now, 0))
	ts := func(d int64) string { return strconv.FormatInt(now+d, 10) }
	body := []byte(cmdVendorBody)

	type tc struct {
		name       string
		secret     string
		tolerance  string
		header     string
		body       []byte
		wantReason Reason // "" means valid
		wantOut    string // exact first line of stdout
	}
	var tests []tc
	for _, s := range cmdSigners {
		mac := cmdExternalMAC(t, s, cmdSecret, ts(-299), body)
		tests = append(tests,
			tc{name: "valid/" + s.name, header: "t=" + ts(-299) + ",v=" + mac, body: body,
				wantOut: "valid: v 1 of 1 matched; t=" + ts(-299) + " is 4m59s old (tolerance 5m0s)"},
			tc{name: "mismatch/other secret/" + s.name, secret: cmdOtherSecret, header: "t=" + ts(-299) + ",v=" + mac, body: body,
				wantReason: ReasonSignatureMismatch,
				wantOut:    "invalid: signature mismatch (signature_mismatch): no v matched under any configured secret"},
		)
	}
	macAt := func(d int64, b []byte) string { return cmdExternalMAC(t, cmdOpenSSL, cmdSecret, ts(d), b) }
	zeros := strings.Repeat("0", 128)
	tests = append(tests,
		tc{name: "valid/second v of two", header: "t=" + ts(0) + ",v=" + zeros + ",v=" + macAt(0, body), body: body,
			wantOut: "valid: v 2 of 2 matched; t=" + ts(0) + " is 0s old (tolerance 5m0s)"},
		tc{name: "valid/upper-case hex and spaces", header: " t=" + ts(-1) + " , v=" + strings.ToUpper(macAt(-1, body)) + " ", body: body,
			wantOut: "valid: v 1 of 1 matched; t=" + ts(-1) + " is 1s old (tolerance 5m0s)"},
		tc{name: "valid/pasted with header name", header: "X-ReReady-Signature-512: t=" + ts(-1) + ",v=" + macAt(-1, body), body: body,
			wantOut: "valid: v 1 of 1 matched; t=" + ts(-1) + " is 1s old (tolerance 5m0s)"},
		tc{name: "valid/future within tolerance", header: "t=" + ts(60) + ",v=" + macAt(60, body), body: body,
			wantOut: "valid: v 1 of 1 matched; t=" + ts(60) + " is 1m0s in the future (tolerance 5m0s)"},
		tc{name: "valid/exactly at tolerance", header: "t=" + ts(-300) + ",v=" + macAt(-300, body), body: body,
			wantOut: "valid: v 1 of 1 matched; t=" + ts(-300) + " is 5m0s old (tolerance 5m0s)"},
		tc{name: "valid/custom tolerance", tolerance: "90s", header: "t=" + ts(-90) + ",v=" + macAt(-90, body), body: body,
			wantOut: "valid: v 1 of 1 matched; t=" + ts(-90) + " is 1m30s old (tolerance 1m30s)"},
		tc{name: "valid/empty body", header: "t=" + ts(0) + ",v=" + macAt(0, nil), body: nil,
			wantOut: "valid: v 1 of 1 matched; t=" + ts(0) + " is 0s old (tolerance 5m0s)"},

		tc{name: "stale/one second past tolerance", header: "t=" + ts(-301) + ",v=" + macAt(-301, body), body: body,
			wantReason: ReasonTimestampStale,
			wantOut:    "invalid: stale timestamp (timestamp_stale): t " + ts(-301) + " is 5m1s old; tolerance is 5m0s"},
		tc{name: "stale/custom tolerance", tolerance: "1m", header: "t=" + ts(-61) + ",v=" + macAt(-61, body), body: body,
			wantReason: ReasonTimestampStale,
			wantOut:    "invalid: stale timestamp (timestamp_stale): t " + ts(-61) + " is 1m1s old; tolerance is 1m0s"},
		tc{name: "stale/checked before the MAC", header: "t=" + ts(-3600) + ",v=" + zeros, body: body,
			wantReason: ReasonTimestampStale,
			wantOut:    "invalid: stale timestamp (timestamp_stale): t " + ts(-3600) + " is 1h0m0s old; tolerance is 5m0s"},
		tc{name: "future/one second past tolerance", header: "t=" + ts(301) + ",v=" + macAt(301, body), body: body,
			wantReason: ReasonTimestampFuture,
			wantOut:    "invalid: timestamp in the future (timestamp_future): t " + ts(301) + " is 5m1s in the future; tolerance is 5m0s"},

		tc{name: "mismatch/body changed", header: "t=" + ts(0) + ",v=" + macAt(0, body), body: []byte(strings.Replace(cmdVendorBody, "false", "true", 1)),
			wantReason: ReasonSignatureMismatch,
			wantOut:    "invalid: signature mismatch (signature_mismatch): no v matched under any configured secret"},
		tc{name: "mismatch/newline added", header: "t=" + ts(0) + ",v=" + macAt(0, body), body: []byte(cmdVendorBody + "\n"),
			wantReason: ReasonSignatureMismatch,
			wantOut:    "invalid: signature mismatch (signature_mismatch): no v matched under any configured secret"},
		tc{name: "mismatch/secret without ssk_ prefix", secret: strings.TrimPrefix(cmdSecret, verify.SecretPrefix),
			header: "t=" + ts(0) + ",v=" + macAt(0, body), body: body,
			wantReason: ReasonSignatureMismatch,
			wantOut:    "invalid: signature mismatch (signature_mismatch): no v matched under any configured secret"},
		tc{name: "mismatch/t changed", header: "t=" + ts(-1) + ",v=" + macAt(0, body), body: body,
			wantReason: ReasonSignatureMismatch,
			wantOut:    "invalid: signature mismatch (signature_mismatch): no v matched under any configured secret"},

		tc{name: "malformed/no t", header: "v=" + macAt(0, body), body: body,
			wantReason: ReasonSignatureMalformed, wantOut: "invalid: malformed header (signature_malformed): no t"},
		tc{name: "malformed/no v", header: "t=" + ts(0), body: body,
			wantReason: ReasonSignatureMalformed, wantOut: "invalid: malformed header (signature_malformed): no v"},
		tc{name: "malformed/t not digits", header: "t=abc,v=" + macAt(0, body), body: body,
			wantReason: ReasonSignatureMalformed, wantOut: `invalid: malformed header (signature_malformed): t "abc" is not 1-10 digits`},
		tc{name: "malformed/short v", header: "t=" + ts(0) + ",v=abcd", body: body,
			wantReason: ReasonSignatureMalformed, wantOut: `invalid: malformed header (signature_malformed): v "abcd" is not 128 hex characters`},
		tc{name: "malformed/two t", header: "t=" + ts(0) + ",t=" + ts(0) + ",v=" + macAt(0, body), body: body,
			wantReason: ReasonSignatureMalformed, wantOut: "invalid: malformed header (signature_malformed): more than one t"},
		tc{name: "malformed/not key=value", header: "sha512=" + macAt(0, body) + ",garbage", body: body,
			wantReason: ReasonSignatureMalformed, wantOut: "invalid: malformed header (signature_malformed): item 2 has no '='"},
	)

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			secret := tt.secret
			if secret == "" {
				secret = cmdSecret
			}
			var out, errOut bytes.Buffer
			err := runVerify(verifyOptions{Secret: secret, Tolerance: tt.tolerance, Header: tt.header},
				bytes.NewReader(tt.body), &out, &errOut)
			first, rest, _ := strings.Cut(out.String(), "\n")
			if first != tt.wantOut {
				t.Errorf("first line\n%q\nwant\n%q", first, tt.wantOut)
			}
			if tt.wantReason == "" {
				if err != nil {
					t.Errorf("error %v, want none", err)
				}
				if rest != "" {
					t.Errorf("extra output %q", rest)
				}
			} else {
				var f *Failure
				if !errors.As(err, &f) || f.Reason != tt.wantReason {
					t.Errorf("error %v, want reason %s", err, tt.wantReason)
				}
			}
			wantHint := tt.wantReason == ReasonSignatureMismatch && bytes.HasSuffix(tt.body, []byte("\n"))
			if got := strings.Contains(rest, "hint: the body ends with a newline"); got != wantHint {
				t.Errorf("newline hint shown=%v, want %v; output:\n%s", got, wantHint, out.String())
			}
			wantWarning := !strings.HasPrefix(secret, verify.SecretPrefix)
			if got := strings.Contains(errOut.String(), "does not start with ssk_"); got != wantWarning {
				t.Errorf("ssk_ warning shown=%v, want %v; stderr %q", got, wantWarning, errOut.String())
			}
			// The verifying secret and the MAC it expects never appear.
			sig, perr := verify.ParseSignatureHeader(strings.TrimPrefix(tt.header, "X-ReReady-Signature-512:"))
			texts := map[string]string{"stdout": out.String(), "stderr": errOut.String(), "error": fmt.Sprint(err)}
			if perr == nil {
				cmdNoLeak(t, texts, secret, verify.MAC(secret, sig.T, tt.body))
			} else {
				cmdNoLeak(t, texts, secret)
			}
		})
	}
}

func TestCommandVerifyErrors(t *testing.T) {
	cmdSetClock(t, time.Unix(1744831201, 0))
	header := "t=1744831201,v=" + strings.Repeat("a", 128)
	missing := filepath.Join(t.TempDir(), "missing.json")
	tests := []struct {
		name    string
		opts    verifyOptions
		wantErr string
	}{
		{"tolerance not a duration", verifyOptions{Secret: cmdSecret, Tolerance: "abc", Header: header},
			`invalid --tolerance "abc": want a duration such as 5m or 90s`},
		{"tolerance without unit", verifyOptions{Secret: cmdSecret, Tolerance: "300", Header: header},
			`invalid --tolerance "300": want a duration such as 5m or 90s`},
		{"tolerance zero", verifyOptions{Secret: cmdSecret, Tolerance: "0s", Header: header},
			`invalid --tolerance "0s": must be at least 1s`},
		{"tolerance negative", verifyOptions{Secret: cmdSecret, Tolerance: "-5m", Header: header},
			`invalid --tolerance "-5m": must be at least 1s`},
		{"tolerance below a second", verifyOptions{Secret: cmdSecret, Tolerance: "500ms", Header: header},
			`invalid --tolerance "500ms": must be at least 1s`},
		{"no header", verifyOptions{Secret: cmdSecret},
			"--header is required: the captured X-ReReady-Signature-512 value, such as 't=1744831201,v=feef…'"},
		{"blank header", verifyOptions{Secret: cmdSecret, Header: "  "},
			"--header is required: the captured X-ReReady-Signature-512 value, such as 't=1744831201,v=feef…'"},
		{"no secret", verifyOptions{Header: header}, "no signing secret: pass --secret or set $" + envSecret},
		{"missing file", verifyOptions{Secret: cmdSecret, Header: header, File: missing},
			fmt.Sprintf("invalid --file %q: no such file or directory", missing)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envSecret, "")
			var out bytes.Buffer
			err := runVerify(tt.opts, strings.NewReader("{}"), &out, io.Discard)
			if err == nil || err.Error() != tt.wantErr {
				t.Fatalf("error %v, want %q", err, tt.wantErr)
			}
			var f *Failure
			if errors.As(err, &f) {
				t.Errorf("usage error %v is reported as a signature failure", err)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q", out.String())
			}
		})
	}
}

// cmdRequest is what a test upstream received.
type cmdRequest struct {
	Method     string
	RequestURI string
	RawQuery   string
	Header     http.Header
	Body       []byte
}

// cmdRecorder records requests and answers each with a fixed status and body.
type cmdRecorder struct {
	mu       sync.Mutex
	requests []cmdRequest
	status   int
	answer   string
	header   http.Header
}

func (rec *cmdRecorder) record(r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	defer rec.mu.Unlock()
	rec.requests = append(rec.requests, cmdRequest{r.Method, r.RequestURI, r.URL.RawQuery, r.Header.Clone(), body})
}

func (rec *cmdRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.record(r)
	for k, v := range rec.header {
		w.Header()[k] = v
	}
	w.WriteHeader(rec.status)
	io.WriteString(w, rec.answer)
}

func (rec *cmdRecorder) got() []cmdRequest {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]cmdRequest(nil), rec.requests...)
}

// cmdKeys returns the keys of the JSON object in body, in order, and its values.
func cmdKeys(t *testing.T, body []byte) ([]string, map[string]any) {
	t.Helper()
	dec := json.NewDecoder(bytes.NewReader(body))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		t.Fatalf("body %q is not a JSON object", body)
	}
	var keys []string
	vals := map[string]any{}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		var v any
		if err := dec.Decode(&v); err != nil {
			t.Fatalf("body %q: %v", body, err)
		}
		keys = append(keys, tok.(string))
		vals[tok.(string)] = v
	}
	return keys, vals
}

// cmdCheckSignature checks a received signature header with the Python signer.
func cmdCheckSignature(t *testing.T, header, secret string, wantT int64, body []byte) {
	t.Helper()
	parts := strings.Split(header, ",")
	if len(parts) != 2 || !strings.HasPrefix(parts[0], "t=") || !strings.HasPrefix(parts[1], "v=") {
		t.Fatalf("signature header %q is not t=...,v=...", header)
	}
	ts, v := parts[0][2:], parts[1][2:]
	if ts != strconv.FormatInt(wantT, 10) {
		t.Errorf("signed at t=%s, want %d", ts, wantT)
	}
	if want := cmdExternalMAC(t, cmdPython, secret, ts, body); v != want {
		t.Errorf("v=%s does not match Python's HMAC of the received bytes %s", v, want)
	}
}

func TestCommandSend(t *testing.T) {
	t.Setenv(envSecret, "")
	const now = 1744831201
	cmdSetClock(t, time.Unix(now, 0))
	rec := &cmdRecorder{status: http.StatusOK, answer: "thanks\n"}
	srv := httptest.NewServer(rec)
	defer srv.Close()
	vendorKeys := []string{"device_return_id", "serial_number", "state", "test", "ticket_url", "url"}

	// send runs runSend and returns what the upstream saw of it.
	send := func(t *testing.T, o sendOptions) (cmdRequest, string, error) {
		t.Helper()
		before := len(rec.got())
		var out, errOut bytes.Buffer
		err := runSend(context.Background(), o, &out, &errOut)
		cmdNoLeak(t, map[string]string{"stdout": out.String(), "stderr": errOut.String(), "error": fmt.Sprint(err)},
			o.Secret, o.Token, url.QueryEscape(o.Token))
		reqs := rec.got()[before:]
		if len(reqs) > 1 {
			t.Fatalf("%d requests sent, want at most 1", len(reqs))
		}
		if len(reqs) == 0 {
			return cmdRequest{}, out.String(), err
		}
		return reqs[0], out.String(), err
	}

	t.Run("defaults: vendor shape with nulls and a fresh UUID", func(t *testing.T) {
		ids := map[string]bool{}
		for range 3 {
			req, out, err := send(t, sendOptions{URL: srv.URL + "/hook", Secret: cmdSecret, State: verify.StateComplete})
			if err != nil {
				t.Fatalf("send: %v\n%s", err, out)
			}
			keys, vals := cmdKeys(t, req.Body)
			if fmt.Sprint(keys) != fmt.Sprint(vendorKeys) {
				t.Errorf("keys %v, want %v", keys, vendorKeys)
			}
			id, _ := vals["device_return_id"].(string)
			if !cmdUUIDv4.MatchString(id) {
				t.Errorf("device_return_id %q is not a lower-case UUID v4", id)
			}
			ids[id] = true
			want := `{"device_return_id":"` + id + `","serial_number":null,"state":"complete","test":false,"ticket_url":null,` +
				`"url":"https://www.reready.co/device_returns/` + id + `"}`
			if string(req.Body) != want {
				t.Errorf("body\n%s\nwant\n%s", req.Body, want)
			}
			if req.Method != http.MethodPost || req.RequestURI != "/hook" {
				t.Errorf("request %s %s, want POST /hook", req.Method, req.RequestURI)
			}
			if ct := req.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type %q", ct)
			}
			if sigs := req.Header.Values(verify.SignatureHeader); len(sigs) != 1 {
				t.Fatalf("%d signature headers", len(sigs))
			}
			cmdCheckSignature(t, req.Header.Get(verify.SignatureHeader), cmdSecret, now, req.Body)
			if _, err := verify.ParsePayload(req.Body); err != nil {
				t.Errorf("the gateway's parser rejects the payload: %v", err)
			}
			wantOut := "POST " + srv.URL + "/hook\n" + want + "\n\nHTTP/1.1 200 OK\nthanks\n"
			if out != wantOut {
				t.Errorf("stdout\n%q\nwant\n%q", out, wantOut)
			}
		}
		if len(ids) != 3 {
			t.Errorf("device_return_id repeated across sends: %v", ids)
		}
	})

	t.Run("all fields set", func(t *testing.T) {
		const ticket = "https://tickets.example.com/T-1?a=1&b=<2>"
		req, out, err := send(t, sendOptions{URL: srv.URL, Secret: cmdSecret, State: verify.StatePendingReturnShipment, Test: true,
			DeviceReturnID: "dr 42/ä", SerialNumber: "C02XK0AAJG5H", TicketURL: ticket})
		if err != nil {
			t.Fatalf("send: %v\n%s", err, out)
		}
		keys, vals := cmdKeys(t, req.Body)
		if fmt.Sprint(keys) != fmt.Sprint(vendorKeys) {
			t.Errorf("keys %v, want %v", keys, vendorKeys)
		}
		want := map[string]any{
			"device_return_id": "dr 42/ä",
			"serial_number":    "C02XK0AAJG5H",
			"state":            "pending_return_shipment",
			"test":             true,
			"ticket_url":       ticket,
			"url":              "https://www.reready.co/device_returns/dr%2042%2F%C3%A4",
		}
		for k, v := range want {
			if vals[k] != v {
				t.Errorf("%s = %#v, want %#v", k, vals[k], v)
			}
		}
		cmdCheckSignature(t, req.Header.Get(verify.SignatureHeader), cmdSecret, now, req.Body)
		ev, err := verify.ParsePayload(req.Body)
		if err != nil || ev.TicketURL != ticket || !ev.Test {
			t.Errorf("the gateway's parser reads %+v, %v", ev, err)
		}
	})

	t.Run("every state is accepted", func(t *testing.T) {
		for _, state := range verify.States {
			req, out, err := send(t, sendOptions{URL: srv.URL, Secret: cmdSecret, State: state})
			if err != nil {
				t.Fatalf("state %s: %v\n%s", state, err, out)
			}
			if _, vals := cmdKeys(t, req.Body); vals["state"] != state {
				t.Errorf("state %v, want %s", vals["state"], state)
			}
		}
	})

	t.Run("token appended, other parameters kept", func(t *testing.T) {
		req, out, err := send(t, sendOptions{URL: srv.URL + "/hook?a=1&b=x%20y&c", Token: cmdToken, State: verify.StateFailed})
		if err != nil {
			t.Fatalf("send: %v\n%s", err, out)
		}
		wantQuery := "a=1&b=x%20y&c&token=" + url.QueryEscape(cmdToken)
		if req.RawQuery != wantQuery {
			t.Errorf("query %q, want %q", req.RawQuery, wantQuery)
		}
		if q, _ := url.ParseQuery(req.RawQuery); q.Get("token") != cmdToken || q.Get("b") != "x y" {
			t.Errorf("query decodes to %v", q)
		}
		if h := req.Header.Values(verify.SignatureHeader); h != nil {
			t.Errorf("signed without a secret: %q", h)
		}
		if !strings.HasPrefix(out, "POST "+srv.URL+"/hook?a=1&b=x%20y&c&token=REDACTED\n") {
			t.Errorf("stdout does not show the redacted URL:\n%s", out)
		}
	})

	t.Run("token and secret", func(t *testing.T) {
		req, out, err := send(t, sendOptions{URL: srv.URL + "/", Secret: cmdSecret, Token: "tok-and-secret", State: verify.StateComplete})
		if err != nil {
			t.Fatalf("send: %v\n%s", err, out)
		}
		if req.RequestURI != "/?token=tok-and-secret" {
			t.Errorf("request URI %q", req.RequestURI)
		}
		cmdCheckSignature(t, req.Header.Get(verify.SignatureHeader), cmdSecret, now, req.Body)
	})

	t.Run("secret from environment", func(t *testing.T) {
		t.Setenv(envSecret, cmdOtherSecret)
		req, out, err := send(t, sendOptions{URL: srv.URL, State: verify.StateComplete})
		if err != nil {
			t.Fatalf("send: %v\n%s", err, out)
		}
		cmdCheckSignature(t, req.Header.Get(verify.SignatureHeader), cmdOtherSecret, now, req.Body)
		if strings.Contains(out, cmdOtherSecret) {
			t.Errorf("stdout leaks the secret")
		}
	})

	answers := []struct {
		name    string
		status  int
		answer  string
		header  http.Header
		wantErr string
		wantOut string
	}{
		{"401", http.StatusUnauthorized, "bad signature", nil,
			"answered 401 Unauthorized", "HTTP/1.1 401 Unauthorized\nbad signature\n"},
		{"500", http.StatusInternalServerError, "", nil,
			"answered 500 Internal Server Error", "HTTP/1.1 500 Internal Server Error\n"},
		{"302 not followed", http.StatusFound, "", http.Header{"Location": {"/elsewhere"}},
			"answered 302 Found", "HTTP/1.1 302 Found\nLocation: /elsewhere (not followed)\n"},
		{"204", http.StatusNoContent, "", nil, "", "HTTP/1.1 204 No Content\n"},
	}
	for _, a := range answers {
		t.Run("answer "+a.name, func(t *testing.T) {
			rec.mu.Lock()
			rec.status, rec.answer, rec.header = a.status, a.answer, a.header
			rec.mu.Unlock()
			t.Cleanup(func() {
				rec.mu.Lock()
				rec.status, rec.answer, rec.header = http.StatusOK, "thanks\n", nil
				rec.mu.Unlock()
			})
			req, out, err := send(t, sendOptions{URL: srv.URL + "/hook?x=1", Secret: cmdSecret, Token: cmdToken, State: verify.StateComplete})
			if req.Method == "" {
				t.Fatal("nothing was sent")
			}
			if a.wantErr == "" {
				if err != nil {
					t.Errorf("error %v, want none", err)
				}
			} else if want := "POST " + srv.URL + "/hook?x=1&token=REDACTED: " + a.wantErr; err == nil || err.Error() != want {
				t.Errorf("error %v, want %q", err, want)
			}
			if !strings.HasSuffix(out, "\n\n"+a.wantOut) {
				t.Errorf("stdout\n%s\nwant it to end with\n%s", out, a.wantOut)
			}
		})
	}

	t.Run("transport error", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		_, out, err := send(t, sendOptions{URL: "http://" + addr + "/hook", Secret: cmdSecret, Token: cmdToken, State: verify.StateComplete})
		want := "POST http://" + addr + "/hook?token=REDACTED: dial tcp " + addr + ": connect: connection refused"
		if err == nil || err.Error() != want {
			t.Errorf("error %v, want %q", err, want)
		}
		if strings.Contains(out, "HTTP/") {
			t.Errorf("stdout shows an answer:\n%s", out)
		}
	})

	refusals := []struct {
		name    string
		opts    sendOptions
		wantErr string
	}{
		{"unknown state", sendOptions{URL: srv.URL, Secret: cmdSecret, State: "shipped"},
			`unknown --state "shipped"; want one of: pending_outbound_shipment, pending_outbound_shipment_delivery, ` +
				`pending_return_shipment, pending_return_shipment_delivery, failed, not_returned, complete`},
		{"state in wrong case", sendOptions{URL: srv.URL, Secret: cmdSecret, State: "Complete"},
			`unknown --state "Complete"; want one of: pending_outbound_shipment, pending_outbound_shipment_delivery, ` +
				`pending_return_shipment, pending_return_shipment_delivery, failed, not_returned, complete`},
		{"no state", sendOptions{URL: srv.URL, Secret: cmdSecret},
			`--state is required; want one of: pending_outbound_shipment, pending_outbound_shipment_delivery, ` +
				`pending_return_shipment, pending_return_shipment_delivery, failed, not_returned, complete`},
		{"no secret and no token", sendOptions{URL: srv.URL, State: verify.StateComplete},
			"need a signing secret (--secret or $REREADY_SIGNING_SECRET) or a --token, or both"},
		{"no url", sendOptions{Secret: cmdSecret, State: verify.StateComplete},
			"--url is required: the webhook endpoint to POST to"},
		{"relative url", sendOptions{URL: "/hook", Secret: cmdSecret, State: verify.StateComplete},
			`invalid --url "/hook": want an absolute http:// or https:// URL`},
		{"ftp url", sendOptions{URL: "ftp://127.0.0.1/hook", Secret: cmdSecret, State: verify.StateComplete},
			`invalid --url "ftp://127.0.0.1/hook": want an absolute http:// or https:// URL`},
		{"bad url hides its token", sendOptions{URL: "http://[::1/hook?token=" + cmdToken, Secret: cmdSecret, State: verify.StateComplete},
			`invalid --url "http://[::1/hook?…": want an absolute http:// or https:// URL`},
		{"token twice", sendOptions{URL: srv.URL + "/hook?token=abc", Token: cmdToken, State: verify.StateComplete},
			fmt.Sprintf("invalid --url %q: it already has a token parameter; drop it or --token", srv.URL+"/hook?token=REDACTED")},
	}
	for _, r := range refusals {
		t.Run("refused/"+r.name, func(t *testing.T) {
			req, out, err := send(t, r.opts)
			if err == nil || err.Error() != r.wantErr {
				t.Errorf("error %v, want %q", err, r.wantErr)
			}
			if req.Method != "" || out != "" {
				t.Errorf("sent anyway; stdout %q", out)
			}
		})
	}

	t.Run("token in --url alone is kept and redacted", func(t *testing.T) {
		req, out, err := send(t, sendOptions{URL: srv.URL + "/hook?token=" + url.QueryEscape(cmdToken), State: verify.StateComplete, Secret: cmdSecret})
		if err != nil {
			t.Fatalf("send: %v", err)
		}
		if q, _ := url.ParseQuery(req.RawQuery); q.Get("token") != cmdToken {
			t.Errorf("query %q", req.RawQuery)
		}
		if !strings.HasPrefix(out, "POST "+srv.URL+"/hook?token=REDACTED\n") {
			t.Errorf("stdout:\n%s", out)
		}
	})
}

// cmdGateway serves h, provisioned, in front of a recording upstream the way
// Caddy would: a replacer in the context, handler errors turned into their
// status with the error text as body.
func cmdGateway(t *testing.T, h *Handler) (*httptest.Server, *cmdRecorder) {
	t.Helper()
	ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
	t.Cleanup(cancel)
	h.app = testApp(t)
	if err := h.Provision(ctx); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	t.Cleanup(func() { h.Cleanup() })
	rec := &cmdRecorder{status: http.StatusOK, answer: "upstream ok"}
	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		rec.ServeHTTP(w, r)
		return nil
	})
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r = r.WithContext(context.WithValue(r.Context(), caddy.ReplacerCtxKey, caddy.NewReplacer()))
		if err := h.ServeHTTP(w, r, next); err != nil {
			var he caddyhttp.HandlerError
			if !errors.As(err, &he) {
				t.Errorf("handler returned %T %v, want a caddyhttp.HandlerError", err, err)
				he = caddyhttp.HandlerError{StatusCode: http.StatusInternalServerError, Err: err}
			}
			http.Error(w, he.Err.Error(), he.StatusCode)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, rec
}

func TestCommandSendThroughGateway(t *testing.T) {
	t.Setenv(envSecret, "")
	hmacGW, hmacUp := cmdGateway(t, &Handler{Secrets: []string{cmdOtherSecret, cmdSecret}})
	tokenGW, tokenUp := cmdGateway(t, &Handler{Token: cmdToken})
	bothGW, bothUp := cmdGateway(t, &Handler{Secrets: []string{cmdSecret}, Token: cmdToken})
	now := time.Now()

	tests := []struct {
		name      string
		upstream  *cmdRecorder
		opts      sendOptions
		clock     time.Time
		wantErr   string // "" means delivered
		wantQuery string
		wantHdr   map[string]string // "" means absent
	}{
		{name: "hmac/minimal", upstream: hmacUp,
			opts:  sendOptions{URL: hmacGW.URL + "/hook", Secret: cmdSecret, State: verify.StateComplete, DeviceReturnID: "dr-1"},
			clock: now,
			wantHdr: map[string]string{
				"X-Reready-State": "complete", "X-Reready-Device-Return-Id": "dr-1", "X-Reready-Serial-Number": "",
				"X-Reready-Test": "false", "X-Reready-Ticket-Url": "", "X-Reready-Url": "https://www.reready.co/device_returns/dr-1",
				"X-Reready-Timestamp": strconv.FormatInt(now.Unix(), 10), "X-Reready-Verified": "hmac",
			}},
		{name: "hmac/all fields, second configured secret", upstream: hmacUp,
			opts: sendOptions{URL: hmacGW.URL + "/hook", Secret: cmdSecret, State: verify.StatePendingOutboundShipmentDelivery, Test: true,
				DeviceReturnID: "dr-2", SerialNumber: "SN 1", TicketURL: "https://t.example/1?a=1&b=2"},
			clock: now,
			wantHdr: map[string]string{
				"X-Reready-State": "pending_outbound_shipment_delivery", "X-Reready-Device-Return-Id": "dr-2",
				"X-Reready-Serial-Number": "SN 1", "X-Reready-Test": "true", "X-Reready-Ticket-Url": "https://t.example/1?a=1&b=2",
				"X-Reready-Url": "https://www.reready.co/device_returns/dr-2", "X-Reready-Verified": "hmac",
			}},
		{name: "hmac/wrong secret", upstream: hmacUp,
			opts:    sendOptions{URL: hmacGW.URL + "/hook", Secret: "ssk_wrong", State: verify.StateComplete},
			clock:   now,
			wantErr: "answered 401 Unauthorized"},
		{name: "hmac/token only", upstream: hmacUp,
			opts:    sendOptions{URL: hmacGW.URL + "/hook", Token: cmdToken, State: verify.StateComplete},
			clock:   now,
			wantErr: "answered 401 Unauthorized"},
		{name: "hmac/clock 10 minutes slow", upstream: hmacUp,
			opts:    sendOptions{URL: hmacGW.URL + "/hook", Secret: cmdSecret, State: verify.StateComplete},
			clock:   now.Add(-10 * time.Minute),
			wantErr: "answered 401 Unauthorized"},
		{name: "token/other parameters kept", upstream: tokenUp,
			opts:      sendOptions{URL: tokenGW.URL + "/hook?keep=1&also=x%2By", Token: cmdToken, State: verify.StateNotReturned, DeviceReturnID: "dr-3"},
			clock:     now,
			wantQuery: "keep=1&also=x%2By",
			wantHdr: map[string]string{
				"X-Reready-State": "not_returned", "X-Reready-Device-Return-Id": "dr-3",
				"X-Reready-Timestamp": "", "X-Reready-Verified": "token",
			}},
		{name: "token/wrong token", upstream: tokenUp,
			opts:    sendOptions{URL: tokenGW.URL + "/hook", Token: "nope", State: verify.StateComplete},
			clock:   now,
			wantErr: "answered 401 Unauthorized"},
		{name: "both/delivered", upstream: bothUp,
			opts:  sendOptions{URL: bothGW.URL + "/", Secret: cmdSecret, Token: cmdToken, State: verify.StateFailed},
			clock: now,
			wantHdr: map[string]string{
				"X-Reready-State": "failed", "X-Reready-Verified": "hmac,token",
				"X-Reready-Timestamp": strconv.FormatInt(now.Unix(), 10),
			}},
		{name: "both/no token", upstream: bothUp,
			opts:    sendOptions{URL: bothGW.URL + "/", Secret: cmdSecret, State: verify.StateFailed},
			clock:   now,
			wantErr: "answered 401 Unauthorized"},
	}
	for _, state := range verify.States {
		tests = append(tests, struct {
			name      string
			upstream  *cmdRecorder
			opts      sendOptions
			clock     time.Time
			wantErr   string
			wantQuery string
			wantHdr   map[string]string
		}{name: "hmac/state " + state, upstream: hmacUp, clock: now,
			opts:    sendOptions{URL: hmacGW.URL + "/hook", Secret: cmdSecret, State: state},
			wantHdr: map[string]string{"X-Reready-State": state, "X-Reready-Verified": "hmac"}})
	}

	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cmdSetClock(t, tt.clock)
			before := len(tt.upstream.got())
			var out bytes.Buffer
			err := runSend(context.Background(), tt.opts, &out, io.Discard)
			reqs := tt.upstream.got()[before:]
			if tt.wantErr != "" {
				if err == nil || !strings.HasSuffix(err.Error(), ": "+tt.wantErr) {
					t.Errorf("error %v, want one ending %q", err, tt.wantErr)
				}
				if len(reqs) != 0 {
					t.Errorf("the upstream was reached %d times", len(reqs))
				}
				if !strings.Contains(out.String(), "reready_verify: ") {
					t.Errorf("stdout does not show the gateway's answer:\n%s", out.String())
				}
				return
			}
			if err != nil {
				t.Fatalf("send: %v\n%s", err, out.String())
			}
			if len(reqs) != 1 {
				t.Fatalf("upstream got %d requests, want 1", len(reqs))
			}
			req := reqs[0]
			for k, want := range tt.wantHdr {
				got, present := req.Header.Get(k), len(req.Header.Values(k)) > 0
				if want == "" && present {
					t.Errorf("%s = %q, want absent", k, got)
				} else if want != "" && got != want {
					t.Errorf("%s = %q, want %q", k, got, want)
				}
			}
			if req.RawQuery != tt.wantQuery {
				t.Errorf("upstream query %q, want %q", req.RawQuery, tt.wantQuery)
			}
			if _, vals := cmdKeys(t, req.Body); vals["state"] != tt.opts.State {
				t.Errorf("upstream body %s", req.Body)
			}
			if !strings.HasSuffix(out.String(), "HTTP/1.1 200 OK\nupstream ok\n") {
				t.Errorf("stdout:\n%s", out.String())
			}
		})
	}
}

// cmdCobra builds the registered `reready` command as Caddy would.
func cmdCobra(t *testing.T, args []string, stdin string) (string, error) {
	t.Helper()
	c, ok := caddycmd.Commands()["reready"]
	if !ok {
		t.Fatal("the reready command is not registered")
	}
	root := &cobra.Command{Use: c.Name + " " + c.Usage, Short: c.Short, Long: c.Long, SilenceUsage: true, SilenceErrors: true}
	c.CobraFunc(root)
	var out bytes.Buffer
	root.SetArgs(args)
	root.SetIn(strings.NewReader(stdin))
	root.SetOut(&out)
	root.SetErr(&out)
	err := root.Execute()
	return out.String(), err
}

func TestCommandCobraWiring(t *testing.T) {
	const now = 1744831201
	cmdSetClock(t, time.Unix(now, 0))
	mac := cmdExternalMAC(t, cmdPython, cmdSecret, "1744831201", []byte(cmdVendorBody))
	bodyFile := filepath.Join(t.TempDir(), "body.json")
	if err := os.WriteFile(bodyFile, []byte(cmdVendorBody), 0o600); err != nil {
		t.Fatal(err)
	}
	rec := &cmdRecorder{status: http.StatusOK}
	srv := httptest.NewServer(rec)
	defer srv.Close()

	tests := []struct {
		name    string
		env     string
		args    []string
		stdin   string
		wantOut string // a substring of the output
		wantErr string // "" means success
	}{
		{name: "sign from stdin with the env secret", env: cmdSecret,
			args: []string{"sign", "--timestamp", "1744831201"}, stdin: cmdVendorBody,
			wantOut: "t=1744831201,v=" + mac + "\n"},
		{name: "sign --file --secret",
			args:    []string{"sign", "--secret", cmdSecret, "--timestamp=1744831201", "--file", bodyFile},
			wantOut: "t=1744831201,v=" + mac + "\n"},
		{name: "sign bad timestamp", args: []string{"sign", "--secret", cmdSecret, "--timestamp", "abc"},
			wantErr: `invalid --timestamp "abc": want unix seconds, 1-10 digits`},
		{name: "sign takes no arguments", args: []string{"sign", "body.json"},
			wantErr: `unknown command "body.json" for "reready sign"`},
		{name: "verify valid", env: cmdSecret,
			args:    []string{"verify", "--tolerance", "10s", "--header", "t=1744831201,v=" + mac, "--file", bodyFile},
			wantOut: "valid: v 1 of 1 matched; t=1744831201 is 0s old (tolerance 10s)\n"},
		{name: "verify mismatch", args: []string{"verify", "--secret", cmdOtherSecret, "--header", "t=1744831201,v=" + mac},
			stdin:   cmdVendorBody,
			wantOut: "invalid: signature mismatch (signature_mismatch)",
			wantErr: "signature is invalid: signature_mismatch: no v matched under any configured secret"},
		{name: "verify without header", env: cmdSecret, args: []string{"verify"},
			wantErr: "--header is required: the captured X-ReReady-Signature-512 value, such as 't=1744831201,v=feef…'"},
		{name: "send maps every flag",
			args: []string{"send", "--url", srv.URL + "/h?z=9", "--secret", cmdSecret, "--token", "tk", "--state", "failed", "--test",
				"--device-return-id", "dr-9", "--serial-number", "SN9", "--ticket-url", "https://t.example/9"},
			wantOut: `{"device_return_id":"dr-9","serial_number":"SN9","state":"failed","test":true,` +
				`"ticket_url":"https://t.example/9","url":"https://www.reready.co/device_returns/dr-9"}`},
		{name: "send unknown state", env: cmdSecret, args: []string{"send", "--url", srv.URL, "--state", "lost"},
			wantErr: `unknown --state "lost"; want one of: ` + strings.Join(verify.States, ", ")},
		{name: "no subcommand shows help", args: nil, wantOut: "Available Commands:"},
		{name: "unknown subcommand", args: []string{"frobnicate"},
			wantErr: `unknown command "frobnicate" for "reready"`},
		{name: "send help hides the env secret", env: cmdSecret, args: []string{"send", "--help"},
			wantOut: "Usage:\n  reready send --url <url> [--secret <key>]"},
		{name: "verify help shows the default tolerance", env: cmdSecret, args: []string{"verify", "--help"},
			wantOut: `Largest accepted |now - t| (default "5m0s")`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(envSecret, tt.env)
			out, err := cmdCobra(t, tt.args, tt.stdin)
			if tt.wantErr == "" && err != nil {
				t.Errorf("error %v, want none; output:\n%s", err, out)
			}
			if tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
				t.Errorf("error %v, want %q", err, tt.wantErr)
			}
			if !strings.Contains(out, tt.wantOut) {
				t.Errorf("output\n%s\nlacks %q", out, tt.wantOut)
			}
			cmdNoLeak(t, map[string]string{"output": out, "error": fmt.Sprint(err)}, cmdSecret, cmdOtherSecret)
		})
	}

	t.Run("send help lists every state", func(t *testing.T) {
		out, err := cmdCobra(t, []string{"send", "--help"}, "")
		if err != nil {
			t.Fatal(err)
		}
		for _, state := range verify.States {
			if !regexp.MustCompile(`(?m)^  ` + state + ` +\S`).MatchString(out) {
				t.Errorf("send help does not describe state %s:\n%s", state, out)
			}
		}
	})

	// The send subtest must have reached the upstream with the flag values.
	reqs := rec.got()
	if len(reqs) != 1 {
		t.Fatalf("upstream got %d requests, want 1", len(reqs))
	}
	if reqs[0].RawQuery != "z=9&token=tk" {
		t.Errorf("send query %q, want z=9&token=tk", reqs[0].RawQuery)
	}
	cmdCheckSignature(t, reqs[0].Header.Get(verify.SignatureHeader), cmdSecret, now, reqs[0].Body)
}

func TestCommandNewUUIDv4(t *testing.T) {
	seen := map[string]bool{}
	for range 1000 {
		id := newUUIDv4()
		if !cmdUUIDv4.MatchString(id) {
			t.Fatalf("%q is not a UUID v4", id)
		}
		if seen[id] {
			t.Fatalf("%q repeated", id)
		}
		seen[id] = true
	}
}

func TestCommandSendRejectionHint(t *testing.T) {
	t.Setenv(envSecret, "")
	cmdSetClock(t, time.Unix(1744831201, 0))
	const token = "tok-Secret-42"
	tests := []struct {
		name   string
		status int
		answer string
		header http.Header
		token  string
		want   []string // in the hint, on stderr
		absent []string
	}{
		{"401 with the reason (handle_errors)", 401, "signature_mismatch", nil, "",
			[]string{"hint:", "signature_mismatch", "secret differs"}, []string{"clock"}},
		{"401 with a stale timestamp", 401, "timestamp_stale\n", nil, "",
			[]string{"timestamp_stale", "clock", "2025-04-16T19:20:01Z"}, []string{"secret differs"}},
		{"401 with the reason in a header", 401, "", http.Header{"X-Reready-Reject-Reason": {"token_mismatch"}}, token,
			[]string{"token_mismatch", "--token differs"}, []string{"secret differs"}},
		{"401 without a reason", 401, "", nil, "",
			[]string{"did not say which check failed", "secret differs", "clock", "tolerance", "handle_errors"}, []string{"--token differs"}},
		{"401 without a reason, with a token", 401, "", nil, token,
			[]string{"secret differs", "clock", "--token differs"}, nil},
		{"400 with a payload reason", 400, "payload_wrong_type", nil, "",
			[]string{"payload_wrong_type"}, []string{"secret differs"}},
		{"404 without a reason", 404, "", nil, "",
			[]string{"hint:", "404", "--url"}, []string{"secret differs"}},
		{"an answer that is not a reason code", 401, "Unauthorized: ssk_nope", nil, "",
			[]string{"did not say which check failed", "secret differs"}, []string{"ssk_nope\n"}},
		{"502: no hint", 502, "", nil, "", nil, []string{"hint:"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := &cmdRecorder{status: tc.status, answer: tc.answer, header: tc.header}
			srv := httptest.NewServer(rec)
			defer srv.Close()
			var out, errOut bytes.Buffer
			err := runSend(context.Background(), sendOptions{URL: srv.URL + "/webhooks/reready", Secret: cmdSecret, Token: tc.token,
				State: verify.StateComplete}, &out, &errOut)
			if err == nil || !strings.Contains(err.Error(), strconv.Itoa(tc.status)) {
				t.Fatalf("err = %v, want the %d answer", err, tc.status)
			}
			for _, s := range tc.want {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, errOut.String())
				}
			}
			for _, s := range tc.absent {
				if strings.Contains(errOut.String(), s) {
					t.Errorf("stderr holds %q:\n%s", s, errOut.String())
				}
			}
			if strings.Contains(out.String(), "hint:") {
				t.Errorf("the hint is on stdout:\n%s", out.String())
			}
			// Neither the secret nor any part of it past the ssk_ prefix, nor the token.
			cmdNoLeak(t, map[string]string{"stdout": out.String(), "stderr": errOut.String(), "error": err.Error()},
				cmdSecret, strings.TrimPrefix(cmdSecret, verify.SecretPrefix), token)
		})
	}
}

// `sign` refuses a body with nothing to sign (the gateway rejects it as
// payload_empty), from stdin or a file, and prints no signature.
func TestCommandSignRefusesEmptyBody(t *testing.T) {
	t.Setenv(envSecret, "")
	empty := filepath.Join(t.TempDir(), "empty.json")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, stdin, file, want string
	}{
		{"stdin, nothing", "", "", "the body read from stdin is empty: there is nothing to sign, and the gateway rejects an empty payload (payload_empty)"},
		{"stdin, whitespace", " \r\n\t", "-", "the body read from stdin is empty"},
		{"file, whitespace", "{}", empty, "the body read from --file " + `"` + empty + `"` + " is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			err := runSign(signOptions{Secret: cmdSecret, Timestamp: "1", File: tc.file}, strings.NewReader(tc.stdin), &out, &errOut)
			if err == nil || !strings.HasPrefix(err.Error(), tc.want) {
				t.Fatalf("error %v, want %q", err, tc.want)
			}
			if out.Len() != 0 {
				t.Errorf("printed %q", out.String())
			}
		})
	}
}

// Ages and tolerances read as durations, with days from one day on, in a
// form caddy.ParseDuration reads back.
func TestHumanSeconds(t *testing.T) {
	for _, tc := range []struct {
		sec  int64
		want string
	}{
		{0, "0s"},
		{59, "59s"},
		{299, "4m59s"},
		{3600, "1h0m0s"},
		{51125, "14h12m5s"},
		{86400, "1d"},
		{86401, "1d1s"},
		{51139100, "591d21h18m20s"},
		{8200000000, "94907d9h46m40s"}, // about the farthest t (10 digits) is from now
	} {
		got := verify.HumanSeconds(tc.sec)
		if got != tc.want {
			t.Errorf("verify.HumanSeconds(%d) = %q, want %q", tc.sec, got, tc.want)
		}
		if d, err := caddy.ParseDuration(got); err != nil || d != time.Duration(tc.sec)*time.Second {
			t.Errorf("caddy.ParseDuration(%q) = %v, %v; want %ds", got, d, err, tc.sec)
		}
	}
}

// An old but valid signature and a stale one name their age as a duration.
func TestCommandVerifyAgeIsHuman(t *testing.T) {
	t.Setenv(envSecret, "")
	const now = 1795975040
	cmdSetClock(t, time.Unix(now, 0))
	body := []byte(cmdVendorBody)
	ts := "1744835940" // 591d21h18m20s before now
	header := "t=" + ts + ",v=" + cmdExternalMAC(t, cmdPython, cmdSecret, ts, body)

	var out bytes.Buffer
	if err := runVerify(verifyOptions{Secret: cmdSecret, Tolerance: "1000d", Header: header}, bytes.NewReader(body), &out, &out); err != nil {
		t.Fatal(err)
	}
	if want := "valid: v 1 of 1 matched; t=" + ts + " is 591d21h18m20s old (tolerance 24000h0m0s)\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}

	out.Reset()
	err := runVerify(verifyOptions{Secret: cmdSecret, Header: header}, bytes.NewReader(body), &out, &out)
	if want := "invalid: stale timestamp (timestamp_stale): t " + ts + " is 591d21h18m20s old; tolerance is 5m0s\n"; out.String() != want {
		t.Errorf("printed %q, want %q", out.String(), want)
	}
	// Printed already: the error tells cobraRun not to print it again, and
	// still carries the reason.
	var shown shownError
	var f *Failure
	if !errors.As(err, &shown) || !errors.As(err, &f) || f.Reason != ReasonTimestampStale {
		t.Errorf("error %#v, want a shownError wrapping the %s failure", err, ReasonTimestampStale)
	}
}

// `caddy reready --help` describes every subcommand in its own text, not
// only in cobra's list of names.
func TestCommandHelpDescribesEverySubcommand(t *testing.T) {
	c := caddycmd.Commands()["reready"]
	root := &cobra.Command{Use: c.Name, Long: c.Long}
	c.CobraFunc(root)
	if len(root.Commands()) < 5 {
		t.Fatalf("%d subcommands, want sign, send, verify, deliveries and queue", len(root.Commands()))
	}
	for _, sub := range root.Commands() {
		if !regexp.MustCompile(`(?m)^  ` + sub.Name() + ` +\S`).MatchString(c.Long) {
			t.Errorf("caddy reready --help does not describe %s:\n%s", sub.Name(), c.Long)
		}
	}
}
