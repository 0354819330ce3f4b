package integration

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest"

	"github.com/caddyserver/caddy/v2/caddytest"
)

const (
	secretA = "ssk_e2e_primary_7f3a"
	secretB = "ssk_e2e_rotated_19c4"
	token   = "tok-e2e-5b1d"
)

// received is one request as the upstream saw it.
type received struct {
	Method, RequestURI string
	Header             http.Header
	Body               []byte
	ContentLength      int64
	TransferEncoding   []string
}

// recorder is a real upstream server that records what reaches it. A
// ?sleep=<duration> query makes it answer late.
type recorder struct {
	mu   sync.Mutex
	reqs []received
	srv  *httptest.Server
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec.mu.Lock()
	rec.reqs = append(rec.reqs, received{r.Method, r.RequestURI, r.Header.Clone(), body, r.ContentLength, r.TransferEncoding})
	rec.mu.Unlock()
	if d, err := time.ParseDuration(r.URL.Query().Get("sleep")); err == nil {
		time.Sleep(d)
	}
	w.Header().Set("Content-Type", "application/json")
	io.WriteString(w, `{"ok":true}`)
}

// take returns and forgets what was recorded.
func (rec *recorder) take() []received {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	r := rec.reqs
	rec.reqs = nil
	return r
}

func (rec *recorder) addr() string { return strings.TrimPrefix(rec.srv.URL, "http://") }

// opensslSign signs with `openssl dgst`, independently of the module's Go code.
func opensslSign(t *testing.T, secret string, ts int64, body []byte) string {
	t.Helper()
	cmd := exec.Command("openssl", "dgst", "-sha512", "-hmac", secret, "-r")
	cmd.Stdin = io.MultiReader(strings.NewReader(strconv.FormatInt(ts, 10)+"."), bytes.NewReader(body))
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("openssl (installed by scripts/deps.sh) failed: %v", err)
	}
	mac, _, _ := strings.Cut(string(out), " ")
	if len(mac) != 128 {
		t.Fatalf("openssl printed %q", out)
	}
	return "t=" + strconv.FormatInt(ts, 10) + ",v=" + mac
}

var deliveries atomic.Int64

// payload returns a vendor-shaped event with a fresh device return id, so
// that replay suppression (on by default) never mistakes one test's
// delivery for another's.
func payload(state string, test bool) []byte {
	id := fmt.Sprintf("e025d043-c41d-4167-8bd3-%012d", deliveries.Add(1))
	return []byte(fmt.Sprintf(`{"device_return_id":%q,"serial_number":null,"state":%q,"test":%t,"ticket_url":null,"url":"https://www.reready.co/device_returns/%s"}`, id, state, test, id))
}

func idOf(t *testing.T, body []byte) string {
	var p struct {
		DeviceReturnID string `json:"device_return_id"`
	}
	if err := json.Unmarshal(body, &p); err != nil {
		t.Fatal(err)
	}
	return p.DeviceReturnID
}

var (
	recOnce sync.Once
	rec     *recorder
)

// server starts Caddy in-process once for all tests in this file.
func server(t *testing.T) (*caddytest.Tester, *recorder) {
	recOnce.Do(func() { // one upstream for the package run; caddytest keeps Caddy up
		rec = &recorder{}
		rec.srv = httptest.NewServer(rec)
	})
	tester := caddytest.NewTester(t)
	tester.InitServer(withPorts(fmt.Sprintf(`{
		{{base}}
	}
	%[1]s {
		reready_verify /hook {
			secret %[2]s %[3]s
			max_body 1KiB
			body_timeout 1s
		}
		reready_verify /token {
			token %[4]s
		}
		reready_verify /both {
			secret %[2]s
			token %[4]s
		}
		reready_verify /fallback {
			secret %[2]s
		}
		reverse_proxy /fallback 127.0.0.1:1
		@test vars {http.reready.test} true
		respond @test "ack {http.reready.state}" 202
		reverse_proxy %[5]s {
			header_up X-Placeholders "{http.reready.state}|{http.reready.device_return_id}|{http.reready.serial_number}|{http.reready.test}|{http.reready.ticket_url}|{http.reready.url}|{http.reready.timestamp}|{http.reready.verified}"
		}
		handle_errors 502 {
			reverse_proxy %[5]s
		}
		handle_errors {
			respond "{err.status_code} {err.message}"
		}
	}`, site, secretA, secretB, token, rec.addr())), "caddyfile")
	rec.take()
	return tester, rec
}

func post(t *testing.T, tester *caddytest.Tester, path string, body io.Reader, hdr map[string]string) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, site+path, body)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range hdr {
		req.Header[k] = []string{v}
	}
	resp, err := tester.Client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp, string(b)
}

func TestE2EVerifiedDelivery(t *testing.T) {
	tester, rec := server(t)
	now := time.Now().Unix()
	for _, state := range []string{"pending_outbound_shipment", "pending_outbound_shipment_delivery",
		"pending_return_shipment", "pending_return_shipment_delivery", "failed", "not_returned", "complete"} {
		t.Run(state, func(t *testing.T) {
			body := payload(state, false)
			id := idOf(t, body)
			secret := secretA
			if state == "failed" {
				secret = secretB // the second configured secret
			}
			sig := opensslSign(t, secret, now, body)
			resp, respBody := post(t, tester, "/hook?keep=1&token=not-checked-here", bytes.NewReader(body), map[string]string{
				"X-Reready-Signature-512": sig,
				"X-Reready-State":         "complete",   // spoofed
				"X-Reready-Verified":      "hmac,token", // spoofed
				"X-Reready-Extra":         "spoof",
				"X-Reready-Delivery-Id":   "1-00000000000000000000000000000000", // spoofed
				"X-Reready_test":          "true",                               // underscore form (Caddy 2.11 drops these too)
				"x-rereadY-uRL":           "https://evil.example",
			})
			if resp.StatusCode != 200 || respBody != `{"ok":true}` {
				t.Fatalf("status %d body %q", resp.StatusCode, respBody)
			}
			got := rec.take()
			if len(got) != 1 {
				t.Fatalf("upstream got %d requests", len(got))
			}
			r := got[0]
			if !bytes.Equal(r.Body, body) || r.ContentLength != int64(len(body)) || len(r.TransferEncoding) != 0 {
				t.Fatalf("body not byte-identical: %q (CL %d, TE %v)", r.Body, r.ContentLength, r.TransferEncoding)
			}
			if r.RequestURI != "/hook?keep=1&token=not-checked-here" {
				t.Fatalf("URI changed without a token check: %q", r.RequestURI)
			}
			want := map[string]string{
				"X-Reready-State":            state,
				"X-Reready-Device-Return-Id": id,
				"X-Reready-Test":             "false",
				"X-Reready-Url":              "https://www.reready.co/device_returns/" + id,
				"X-Reready-Timestamp":        strconv.FormatInt(now, 10),
				"X-Reready-Verified":         "hmac",
				"X-Reready-Signature-512":    sig,
				"X-Reready-Delivery-Id":      deliveryIDOf(t, sig),
				"X-Placeholders": state + "|" + id + "||false||https://www.reready.co/device_returns/" + id + "|" +
					strconv.FormatInt(now, 10) + "|hmac",
			}
			for k, v := range want {
				if got := r.Header.Values(k); len(got) != 1 || got[0] != v {
					t.Errorf("%s = %q, want %q", k, got, v)
				}
			}
			for k := range r.Header {
				if _, ok := want[k]; !ok && strings.HasPrefix(strings.ToLower(strings.ReplaceAll(k, "_", "-")), "x-reready-") {
					t.Errorf("client header %s = %q reached the upstream", k, r.Header[k])
				}
			}
			for _, k := range []string{"X-Reready-Serial-Number", "X-Reready-Ticket-Url"} {
				if _, ok := r.Header[k]; ok {
					t.Errorf("%s set although the payload has null", k)
				}
			}
		})
	}
}

func TestE2EChunkedBodyRestored(t *testing.T) {
	tester, rec := server(t)
	body := []byte(`{"device_return_id":"chunky","serial_number":"SN-9","state":"complete","test":false,"ticket_url":"https://t.example/1","url":null,"pad":"` + strings.Repeat("é", 200) + `"}`)
	sig := opensslSign(t, secretA, time.Now().Unix(), body)
	// An io.Reader that is not a *bytes.Reader makes the client send chunked.
	resp, _ := post(t, tester, "/hook", io.MultiReader(bytes.NewReader(body[:100]), bytes.NewReader(body[100:])),
		map[string]string{"X-Reready-Signature-512": sig})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := rec.take()
	if len(got) != 1 || !bytes.Equal(got[0].Body, body) {
		t.Fatalf("upstream got %d requests: %+v", len(got), got)
	}
	r := got[0]
	if r.ContentLength != int64(len(body)) || len(r.TransferEncoding) != 0 || r.Header.Get("Content-Length") != strconv.Itoa(len(body)) {
		t.Fatalf("forwarded as CL %d TE %v header %q", r.ContentLength, r.TransferEncoding, r.Header.Get("Content-Length"))
	}
	if r.Header.Get("X-Reready-Serial-Number") != "SN-9" || r.Header.Get("X-Reready-Ticket-Url") != "https://t.example/1" {
		t.Fatalf("optional headers: %v", r.Header)
	}
	if _, ok := r.Header["X-Reready-Url"]; ok {
		t.Fatal("X-Reready-Url set although url is null")
	}
}

func TestE2ETestEventAcknowledged(t *testing.T) {
	tester, rec := server(t)
	body := payload("complete", true)
	resp, respBody := post(t, tester, "/hook", bytes.NewReader(body),
		map[string]string{"X-Reready-Signature-512": opensslSign(t, secretA, time.Now().Unix(), body)})
	if resp.StatusCode != 202 || respBody != "ack complete" {
		t.Fatalf("status %d body %q", resp.StatusCode, respBody)
	}
	if got := rec.take(); len(got) != 0 {
		t.Fatalf("test event reached the upstream: %+v", got)
	}
}

func TestE2EToken(t *testing.T) {
	tester, rec := server(t)
	body := payload("complete", false)
	resp, _ := post(t, tester, "/token?a=1&token="+token+"&b=%2F2&c", bytes.NewReader(body), nil)
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := rec.take()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests", len(got))
	}
	r := got[0]
	if r.RequestURI != "/token?a=1&b=%2F2&c" {
		t.Fatalf("upstream URI %q, want token stripped and the rest kept in order", r.RequestURI)
	}
	if r.Header.Get("X-Reready-Verified") != "token" {
		t.Fatalf("X-Reready-Verified = %q", r.Header.Get("X-Reready-Verified"))
	}
	if _, ok := r.Header["X-Reready-Timestamp"]; ok {
		t.Fatal("X-Reready-Timestamp set without a signature check")
	}
	if !strings.HasSuffix(r.Header.Get("X-Placeholders"), "||token") {
		t.Fatalf("placeholders %q", r.Header.Get("X-Placeholders"))
	}

	// Only the token: the URI becomes bare.
	post(t, tester, "/token?token="+token, bytes.NewReader(body), nil)
	if got := rec.take(); len(got) != 1 || got[0].RequestURI != "/token" {
		t.Fatalf("got %+v", got)
	}

	// Both checks configured: both must pass.
	sig := opensslSign(t, secretA, time.Now().Unix(), body)
	resp, _ = post(t, tester, "/both?token="+token, bytes.NewReader(body), map[string]string{"X-Reready-Signature-512": sig})
	got = rec.take()
	if resp.StatusCode != 200 || len(got) != 1 || got[0].Header.Get("X-Reready-Verified") != "hmac,token" || got[0].RequestURI != "/both" {
		t.Fatalf("both: status %d, got %+v", resp.StatusCode, got)
	}
}

func TestE2ERejections(t *testing.T) {
	tester, rec := server(t)
	now := time.Now().Unix()
	good := payload("complete", false)
	sig := func(secret string, ts int64, body []byte) map[string]string {
		return map[string]string{"X-Reready-Signature-512": opensslSign(t, secret, ts, body)}
	}
	big := append(good[:len(good)-1:len(good)-1], []byte(`,"pad":"`+strings.Repeat("x", 1100)+`"}`)...)
	tests := []struct {
		name   string
		path   string
		body   io.Reader
		hdr    map[string]string
		status int
		reason string
	}{
		{"no signature", "/hook", bytes.NewReader(good), nil, 401, "signature_missing"},
		{"malformed signature", "/hook", bytes.NewReader(good), map[string]string{"X-Reready-Signature-512": "t=1,v=zz"}, 401, "signature_malformed"},
		{"forged", "/hook", bytes.NewReader(good), sig("ssk_attacker", now, good), 401, "signature_mismatch"},
		{"tampered", "/hook", bytes.NewReader(payload("failed", false)), sig(secretA, now, good), 401, "signature_mismatch"},
		{"stale", "/hook", bytes.NewReader(good), sig(secretA, now-301, good), 401, "timestamp_stale"},
		// 30 s past the 300 s tolerance: the cases run one after another
		// from one `now`, and a loaded machine must not bring t back inside.
		{"future", "/hook", bytes.NewReader(good), sig(secretA, now+330, good), 401, "timestamp_future"},
		{"empty body", "/hook", bytes.NewReader(nil), sig(secretA, now, nil), 400, "payload_empty"},
		{"not JSON", "/hook", strings.NewReader("state=complete"), sig(secretA, now, []byte("state=complete")), 400, "payload_invalid_json"},
		{"missing state", "/hook", strings.NewReader(`{"device_return_id":"d"}`), sig(secretA, now, []byte(`{"device_return_id":"d"}`)), 400, "payload_missing_field"},
		{"CRLF in id", "/hook", strings.NewReader(`{"device_return_id":"d\r\nX: y","state":"complete"}`),
			sig(secretA, now, []byte(`{"device_return_id":"d\r\nX: y","state":"complete"}`)), 400, "payload_invalid_string"},
		{"wrong type", "/hook", strings.NewReader(`{"device_return_id":"d","state":"complete","test":"yes"}`),
			sig(secretA, now, []byte(`{"device_return_id":"d","state":"complete","test":"yes"}`)), 400, "payload_wrong_type"},
		{"bad payload unauthenticated is 401", "/hook", strings.NewReader("nope"), nil, 401, "signature_missing"},
		{"oversized with Content-Length", "/hook", bytes.NewReader(big), sig(secretA, now, big), 413, "body_too_large"},
		{"oversized chunked", "/hook", io.MultiReader(bytes.NewReader(big)), sig(secretA, now, big), 413, "body_too_large"},
		{"token missing", "/token", bytes.NewReader(good), nil, 401, "token_missing"},
		{"token wrong", "/token?token=guess", bytes.NewReader(good), nil, 401, "token_mismatch"},
		{"token twice", "/token?token=" + token + "&token=" + token, bytes.NewReader(good), nil, 401, "token_duplicated"},
		{"both: signature without token", "/both", bytes.NewReader(good), sig(secretA, now, good), 401, "token_missing"},
		{"both: token without signature", "/both?token=" + token, bytes.NewReader(good), nil, 401, "signature_missing"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			resp, body := post(t, tester, tc.path, tc.body, tc.hdr)
			if resp.StatusCode != tc.status {
				t.Fatalf("status %d (%q), want %d", resp.StatusCode, body, tc.status)
			}
			// handle_errors renders {err.message}, which starts with the reason code.
			wantPrefix := fmt.Sprintf("%d reready_verify: %s: ", tc.status, tc.reason)
			if !strings.HasPrefix(body, wantPrefix) {
				t.Fatalf("body %q, want prefix %q", body, wantPrefix)
			}
			for _, s := range []string{secretA, secretB, token} {
				if strings.Contains(body, s) {
					t.Fatalf("response leaks a secret: %q", body)
				}
			}
			if got := rec.take(); len(got) != 0 {
				t.Fatalf("rejected request reached the upstream: %+v", got)
			}
		})
	}

	t.Run("duplicate signature header", func(t *testing.T) {
		req, _ := http.NewRequest(http.MethodPost, site+"/hook", bytes.NewReader(good))
		s := opensslSign(t, secretA, now, good)
		req.Header["X-Reready-Signature-512"] = []string{s, s}
		resp, err := tester.Client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 401 || !strings.Contains(string(b), "signature_duplicated") {
			t.Fatalf("status %d %q", resp.StatusCode, b)
		}
		if got := rec.take(); len(got) != 0 {
			t.Fatal("forwarded")
		}
	})

	for _, method := range []string{"GET", "PUT", "HEAD", "DELETE"} {
		t.Run("method "+method, func(t *testing.T) {
			req, _ := http.NewRequest(method, site+"/hook", nil)
			resp, err := tester.Client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != 405 || resp.Header.Get("Allow") != "POST" || !resp.Close {
				t.Fatalf("status %d Allow %q close %v", resp.StatusCode, resp.Header.Get("Allow"), resp.Close)
			}
			if got := rec.take(); len(got) != 0 {
				t.Fatal("forwarded")
			}
		})
	}
}

// rawRequest writes head (and body) on a raw connection and returns the
// first response's status line and whether it closes the connection.
func rawRequest(t *testing.T, head string, body []byte) (status string, closed bool, took time.Duration) {
	t.Helper()
	conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", httpPort))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	start := time.Now()
	if _, err := io.WriteString(conn, head); err != nil {
		t.Fatal(err)
	}
	if len(body) > 0 {
		conn.Write(body)
	}
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatalf("reading response: %v", err)
	}
	resp.Body.Close()
	return resp.Status, resp.Close, time.Since(start)
}

func TestE2EOversizedExpectContinueNotRead(t *testing.T) {
	server(t)
	status, closed, _ := rawRequest(t, "POST /hook HTTP/1.1\r\nHost: "+siteHost+"\r\nContent-Type: application/json\r\n"+
		"Content-Length: 5000000\r\nExpect: 100-continue\r\n\r\n", nil)
	if !strings.HasPrefix(status, "413") {
		t.Fatalf("first response %q, want 413 without 100 Continue", status)
	}
	if !closed {
		t.Fatal("413 does not close the connection")
	}
}

func TestE2EBodyTimeout(t *testing.T) {
	server(t)
	// Headers promise 500 bytes; only 10 arrive. body_timeout is 1s.
	status, closed, took := rawRequest(t, "POST /hook HTTP/1.1\r\nHost: "+siteHost+"\r\nContent-Type: application/json\r\n"+
		"Content-Length: 500\r\nX-Reready-Signature-512: t=1,v=00\r\n\r\n", []byte(`{"device_r`))
	if !strings.HasPrefix(status, "408") || !closed {
		t.Fatalf("got %q (close %v), want 408 and close", status, closed)
	}
	if took < 900*time.Millisecond || took > 5*time.Second {
		t.Fatalf("answered after %s; body_timeout is 1s", took)
	}
}

// The body read deadline is cleared once the body is in: an upstream that
// takes longer than body_timeout (1s here) still answers.
func TestE2ESlowUpstreamAfterBodyRead(t *testing.T) {
	tester, rec := server(t)
	body := payload("complete", false)
	resp, respBody := post(t, tester, "/hook?sleep=1500ms", bytes.NewReader(body),
		map[string]string{"X-Reready-Signature-512": opensslSign(t, secretA, time.Now().Unix(), body)})
	if resp.StatusCode != 200 || respBody != `{"ok":true}` {
		t.Fatalf("status %d body %q", resp.StatusCode, respBody)
	}
	if got := rec.take(); len(got) != 1 {
		t.Fatalf("upstream got %d requests", len(got))
	}
}

// A client cannot smuggle X-ReReady-* values past the handler as trailers,
// nor make reverse_proxy drop the trusted headers by naming them in
// Connection.
func TestE2ETrailersAndConnectionTokens(t *testing.T) {
	tester, rec := server(t)
	body := payload("complete", false)
	sig := opensslSign(t, secretA, time.Now().Unix(), body)

	// Chunked with declared trailers, on a raw connection.
	head := "POST /hook HTTP/1.1\r\nHost: " + siteHost + "\r\nContent-Type: application/json\r\n" +
		"Transfer-Encoding: chunked\r\nTrailer: X-ReReady-Verified, X-ReReady-State\r\n" +
		"X-ReReady-Signature-512: " + sig + "\r\n\r\n"
	chunked := fmt.Sprintf("%x\r\n%s\r\n0\r\nX-ReReady-Verified: hmac,token\r\nX-ReReady-State: failed\r\n\r\n", len(body), body)
	status, _, _ := rawRequest(t, head, []byte(chunked))
	if !strings.HasPrefix(status, "200") {
		t.Fatalf("status %q", status)
	}
	got := rec.take()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests", len(got))
	}
	r := got[0]
	if !bytes.Equal(r.Body, body) || r.ContentLength != int64(len(body)) || len(r.TransferEncoding) != 0 {
		t.Fatalf("forwarded as CL %d TE %v body %q", r.ContentLength, r.TransferEncoding, r.Body)
	}
	if r.Header.Get("X-Reready-State") != "complete" || r.Header.Get("X-Reready-Verified") != "hmac" || r.Header.Get("Trailer") != "" {
		t.Fatalf("headers %v", r.Header)
	}

	// Connection naming the trusted headers.
	body = payload("failed", false)
	resp, _ := post(t, tester, "/hook", bytes.NewReader(body), map[string]string{
		"X-Reready-Signature-512": opensslSign(t, secretA, time.Now().Unix(), body),
		"Connection":              "keep-alive, X-ReReady-State, x-reready-verified, X-ReReady-Device-Return-Id",
	})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got = rec.take()
	if len(got) != 1 {
		t.Fatalf("upstream got %d requests", len(got))
	}
	h := got[0].Header
	if h.Get("X-Reready-State") != "failed" || h.Get("X-Reready-Verified") != "hmac" || h.Get("X-Reready-Device-Return-Id") != idOf(t, body) {
		t.Fatalf("trusted headers dropped via Connection: %v", h)
	}
}

// When the upstream is down, a handle_errors route may proxy the request to
// a fallback: it gets the verified body, whole.
func TestE2EErrorRouteGetsTheBody(t *testing.T) {
	tester, rec := server(t)
	body := payload("failed", false)
	resp, _ := post(t, tester, "/fallback", bytes.NewReader(body),
		map[string]string{"X-Reready-Signature-512": opensslSign(t, secretA, time.Now().Unix(), body)})
	if resp.StatusCode != 200 {
		t.Fatalf("status %d", resp.StatusCode)
	}
	got := rec.take()
	if len(got) != 1 || !bytes.Equal(got[0].Body, body) || got[0].Header.Get("X-Reready-State") != "failed" {
		t.Fatalf("fallback got %+v", got)
	}
}

// deliveryIDOf is the delivery id the gateway gives a delivery signed
// with sig by an independent signer.
func deliveryIDOf(t *testing.T, sig string) string {
	t.Helper()
	id, err := rrtest.DeliveryID(sig)
	if err != nil {
		t.Fatal(err)
	}
	return id
}
