//go:build fullsuite

package realbin

// Faults on the real binary: the upstream down, failing or slow; request
// bodies that stall, trickle or are abandoned; Expect: 100-continue with an
// oversized body; a flood of slow uploads. Each test stops its gateway and
// scans everything Caddy logged for the secrets, the token and the expected
// MACs of every request it sent.
//
// The helpers shared with load_test.go and reload_test.go are here; their
// names start with rel so they cannot clash with other files'.

import (
	"bufio"
	"crypto/hmac"
	"crypto/sha512"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// ---- a Go upstream ---------------------------------------------------------

// relApp is an upstream app in Go, much faster than the example apps under
// load and able to fail on demand. It records every request it reads, keyed
// by the X-ReReady-Device-Return-Id the gateway set.
type relApp struct {
	srv  *httptest.Server
	addr string
	mode atomic.Int32 // relAppOK, ...
	slow time.Duration

	mu  sync.Mutex
	got map[string][]relGot
	n   int
}

// relGot is one request as the Go app saw it.
type relGot struct {
	body     []byte
	status   int // what the app answered; 0 if it dropped the connection
	verified string
}

// What relApp does with the next requests.
const (
	relAppOK   = iota // 200 {"ok":true}
	relApp500         // 500: the app refuses the event
	relAppDrop        // reads the request, then closes the connection unanswered
	relAppSlow        // answers 200 only after slow
)

// relStartApp starts a Go app on addr ("" for any free port on 127.0.0.1),
// stopped when the test ends.
func relStartApp(t *testing.T, addr string) *relApp {
	t.Helper()
	a := &relApp{got: map[string][]relGot{}, slow: 2500 * time.Millisecond}
	a.srv = httptest.NewUnstartedServer(http.HandlerFunc(a.serve))
	if addr != "" {
		l, err := net.Listen("tcp", addr)
		if err != nil {
			t.Fatalf("Go app on %s: %v", addr, err)
		}
		a.srv.Listener.Close()
		a.srv.Listener = l
	}
	a.srv.Start()
	a.addr = a.srv.Listener.Addr().String()
	t.Cleanup(a.srv.Close)
	return a
}

func (a *relApp) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	got := relGot{body: body, verified: r.Header.Get("X-Reready-Verified")}
	switch a.mode.Load() {
	case relApp500:
		got.status = http.StatusInternalServerError
		a.record(r, got)
		http.Error(w, "the app refused the event", got.status)
	case relAppDrop:
		a.record(r, got)
		if conn, _, err := http.NewResponseController(w).Hijack(); err == nil {
			conn.Close()
		}
	case relAppSlow:
		time.Sleep(a.slow) // the app takes the event, too late for the gateway
		got.status = http.StatusOK
		a.record(r, got)
		io.WriteString(w, `{"ok":true}`)
	default:
		got.status = http.StatusOK
		a.record(r, got)
		w.Header().Set("Content-Type", "application/json")
		io.WriteString(w, `{"ok":true}`)
	}
}

func (a *relApp) record(r *http.Request, g relGot) {
	a.mu.Lock()
	defer a.mu.Unlock()
	id := r.Header.Get("X-Reready-Device-Return-Id")
	a.got[id] = append(a.got[id], g)
	a.n++
}

// requests returns what the app received for device return id.
func (a *relApp) requests(id string) []relGot {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]relGot(nil), a.got[id]...)
}

// total is the number of requests the app received.
func (a *relApp) total() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.n
}

// ---- signing and the log scan ------------------------------------------------

// relSign signs with Go's crypto/hmac; the load tests check a sample of its
// signatures against the independent signers.
func relSign(secret string, ts int64, body []byte) string {
	return fmt.Sprintf("t=%d,v=%s", ts, relMAC(secret, ts, body))
}

func relMAC(secret string, ts int64, body []byte) string {
	m := hmac.New(sha512.New, []byte(secret))
	fmt.Fprintf(m, "%d.", ts)
	m.Write(body)
	return hex.EncodeToString(m.Sum(nil))
}

// relLedger collects what must never appear in a gateway's logs: the
// secrets, the token, and the expected MAC, under every configured secret,
// of every request sent (valid or forged).
type relLedger struct {
	mu      sync.Mutex
	secrets []string // secrets and tokens
	keys    []string // the configured secrets, to compute expected MACs
	macs    map[string]bool
}

func relNewLedger(secrets []string, tokens ...string) *relLedger {
	return &relLedger{secrets: append(append([]string{}, secrets...), tokens...), keys: secrets, macs: map[string]bool{}}
}

// sent notes a request whose signed payload is ts and body.
func (l *relLedger) sent(ts int64, body []byte) {
	l.mu.Lock()
	keys := l.keys
	l.mu.Unlock()
	macs := make([]string, len(keys))
	for i, k := range keys {
		macs[i] = relMAC(k, ts, body)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, m := range macs {
		l.macs[m] = true
	}
}

// addSecret is for a reload that adds one: later requests are checked
// against it too.
func (l *relLedger) addSecret(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.secrets = append(l.secrets, s)
	l.keys = append(append([]string{}, l.keys...), s)
}

var relHexRun = regexp.MustCompile(`[0-9a-fA-F]{32,}`)

// relStopAndScan stops g (gracefully, so its last lines are flushed) and
// fails the test if its output holds a secret, the token, or any 32 or more
// hex digits of an expected MAC. It wants at least minRejected "rejected
// webhook" lines, so that an empty or lost log cannot pass the scan.
//
// Caddy's error log records a request answered 5xx (502, 504) as it arrived,
// headers and all, so X-ReReady-Signature-512 of a genuine delivery lands
// there unless the log filter deletes it (relLogFilter does). With
// allowSentSignature, such copies of the sent header are counted and
// reported instead of failing the test; anything else still fails it.
func relStopAndScan(t *testing.T, g *gateway, l *relLedger, minRejected int, allowSentSignature bool) {
	t.Helper()
	g.Cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-g.Exited:
	case <-time.After(10 * time.Second):
		g.Cmd.Process.Kill()
		<-g.Exited
	}
	logs := g.Logs.String()
	lines := strings.Split(strings.TrimSpace(logs), "\n")
	l.mu.Lock()
	defer l.mu.Unlock()
	leaks, sentSignature := 0, 0
	for _, s := range l.secrets {
		// The secret, or its random part without the ssk_ prefix.
		if strings.Contains(logs, s) || strings.Contains(logs, strings.TrimPrefix(s, "ssk_")) {
			leaks++
			t.Errorf("caddy's log contains the secret or token %q", s)
		}
	}
	for _, line := range lines {
		for _, run := range relHexRun.FindAllString(line, -1) {
			run = strings.ToLower(run)
			for mac := range l.macs {
				if !strings.Contains(mac, run) && !strings.Contains(run, mac[:32]) {
					continue
				}
				if strings.Contains(line, `"logger":"http.log.error"`) &&
					strings.Contains(line, `"X-Reready-Signature-512":["t=`) && strings.Contains(line, ",v="+mac+`"]`) {
					sentSignature++
					if allowSentSignature {
						break
					}
				}
				leaks++
				if leaks <= 5 {
					t.Errorf("caddy's log contains an expected MAC (%s...) in:\n%s", mac[:16], line)
				}
				break
			}
		}
	}
	rejected := strings.Count(logs, `"rejected webhook"`)
	if rejected < minRejected {
		t.Errorf("caddy logged %d rejections, want at least %d: is its output captured?", rejected, minRejected)
	}
	t.Logf("RELIABILITY logs %s: lines=%d bytes=%d rejection_lines=%d secrets_and_tokens=%d expected_macs=%d leaks=%d sent_signature_in_error_log=%d",
		t.Name(), len(lines), len(logs), rejected, len(l.secrets), len(l.macs), leaks, sentSignature)
}

// ---- raw HTTP/1.1 ------------------------------------------------------------

// relDial connects to g with every operation bounded by replyTimeout.
func relDial(t *testing.T, g *gateway) *net.TCPConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", strings.TrimPrefix(g.Base, "http://"), 2*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", g.Base, err)
	}
	c.SetDeadline(time.Now().Add(replyTimeout))
	t.Cleanup(func() { c.Close() })
	return c.(*net.TCPConn)
}

// relHead is a POST's request head: Content-Length n, or chunked if n < 0;
// hdr holds name, value pairs.
func relHead(g *gateway, path string, n int, hdr ...string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\n", path, strings.TrimPrefix(g.Base, "http://"))
	if n >= 0 {
		fmt.Fprintf(&b, "Content-Length: %d\r\n", n)
	} else {
		b.WriteString("Transfer-Encoding: chunked\r\n")
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		fmt.Fprintf(&b, "%s: %s\r\n", hdr[i], hdr[i+1])
	}
	b.WriteString("\r\n")
	return b.String()
}

// relClient is an HTTP client with a fresh connection per request, as a
// webhook sender typically makes them.
var relClient = &http.Client{Timeout: replyTimeout, Transport: &http.Transport{DisableKeepAlives: true}}

// relPost sends body to g without failing the test on a transport error.
func relPost(c *http.Client, g *gateway, target string, body []byte, sig string) (status int, reply string, err error) {
	req, err := http.NewRequest(http.MethodPost, g.Base+target, strings.NewReader(string(body)))
	if err != nil {
		return 0, "", err
	}
	req.Header.Set("Content-Type", "application/json")
	if sig != "" {
		req.Header.Set("X-ReReady-Signature-512", sig)
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// ---- the tests -------------------------------------------------------------

// The upstream refuses connections, answers 500, or drops the connection:
// the sender gets 502/500/502, never a 2xx, and the delivery is not
// remembered, so ReReady's retry is forwarded once the app is back; a repeat
// after that is acknowledged without forwarding. The token rides along, and
// the error log that each 502 writes is scanned: with relLogFilter, neither
// the token nor the signature is in it.
func TestReliabilityUpstreamDown(t *testing.T) {
	const secret, token = "ssk_down_8c41e2f07a", "tok_down_5ae1c0d9b3"
	port, err := harness.ReservePort()
	if err != nil {
		t.Fatal(err)
	}
	appAddr := fmt.Sprintf("127.0.0.1:%d", port)
	g := startGatewayWith(t, relLogFilter, `
	reready_verify /webhooks/reready {
		secret `+secret+`
		token `+token+`
	}
	reverse_proxy /webhooks/reready `+appAddr, nil, secret, token)
	l := relNewLedger([]string{secret}, token)
	target := "/webhooks/reready?token=" + token

	send := func(t *testing.T, body []byte, sig string) (int, string) {
		t.Helper()
		status, reply, err := relPost(relClient, g, target, body, sig)
		if err != nil {
			t.Fatalf("POST: %v", err)
		}
		return status, reply
	}
	event := func() ([]byte, string, string) {
		ev := harness.NewEvent("pending_return_shipment")
		body, ts := ev.Body(), now()
		l.sent(ts, body)
		return body, relSign(secret, ts, body), ev.ID
	}
	failures := 0

	// Nothing listens on the app's port yet.
	body, sig, id := event()
	for i := 0; i < 2; i++ {
		if status, reply := send(t, body, sig); status != http.StatusBadGateway {
			t.Fatalf("upstream down, attempt %d: %d %q, want 502", i+1, status, reply)
		}
		failures++
	}
	app := relStartApp(t, appAddr)
	if status, reply := send(t, body, sig); status != http.StatusOK || reply != `{"ok":true}` {
		t.Fatalf("retry once the app is up: %d %q, want the app's 200 {\"ok\":true}", status, reply)
	}
	if status, reply := send(t, body, sig); status != http.StatusOK || reply != "already delivered\n" {
		t.Fatalf("repeat after delivery: %d %q, want 200 \"already delivered\"", status, reply)
	}
	if got := app.requests(id); len(got) != 1 || string(got[0].body) != string(body) || got[0].verified != "hmac,token" {
		t.Fatalf("the app got %d requests for the event, want exactly 1 with the body sent, verified hmac,token", len(got))
	}

	// The app is up but does not take the event.
	for _, c := range []struct {
		name   string
		mode   int32
		status int
	}{
		{"app answers 500", relApp500, http.StatusInternalServerError},
		{"app drops the connection", relAppDrop, http.StatusBadGateway},
	} {
		t.Run(c.name, func(t *testing.T) {
			body, sig, id := event()
			app.mode.Store(c.mode)
			status, reply := send(t, body, sig)
			app.mode.Store(relAppOK)
			if status != c.status {
				t.Fatalf("%d %q, want %d", status, reply, c.status)
			}
			failures++
			if status, reply := send(t, body, sig); status != http.StatusOK || reply != `{"ok":true}` {
				t.Fatalf("retry: %d %q, want the app's 200 (the failure must not be remembered)", status, reply)
			}
			if got := app.requests(id); len(got) != 2 || got[1].status != http.StatusOK {
				t.Fatalf("the app got %d requests for the event, want 2 (the failed one, then the retry)", len(got))
			}
		})
	}
	// The 502s' error log lines hold the request as it arrived: the URI
	// (the token deleted by the filter) and the headers (the signature
	// deleted by the filter).
	relStopAndScan(t, g, l, 0, false)
	if n := strings.Count(g.Logs.String(), `"logger":"http.log.error"`); n < 3 {
		t.Errorf("caddy logged %d errors, want one per 502 (3): the scan saw none of them", n)
	}
	t.Logf("RELIABILITY upstream-down: failed_deliveries=%d answered_2xx_while_failed=0 retries_forwarded=3 repeats_forwarded=0", failures)
}

// relLogFilter is the README's recipe ("Keeping the token and signatures
// out of Caddy's logs") for the error log, which is all these gateways
// write: the query and X-ReReady-Signature-512, which the error log of a
// 5xx answer would otherwise hold (see relStopAndScan). It is the README's
// global log filter, word for word (TestReadmeLogFilter checks).
const relLogFilter = `
	log default {
		format filter {
			request>uri regexp [?].* ?REDACTED
			request>headers>X-Reready-Signature-512 delete
			request>headers>X_reready_signature_512 delete
			request>headers>X.reready.signature.512 delete
		}
	}`

// An upstream slower than reverse_proxy's response_header_timeout gets the
// sender a 504 after about that long (not a 2xx), and an immediate retry is
// forwarded: the claim on the delivery was released. This gateway has no log
// filter, so the 504's error log line holds the signature header as sent:
// the scan counts that copy (sent_signature_in_error_log) and fails on
// anything else.
func TestReliabilityUpstreamTimeout(t *testing.T) {
	const secret = "ssk_slow_03b7d9e1f2"
	app := relStartApp(t, "")
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
	}
	reverse_proxy /webhooks/reready `+app.addr+` {
		transport http {
			response_header_timeout 1s
		}
	}`, nil, secret)
	l := relNewLedger([]string{secret})

	ev := harness.NewEvent("complete")
	body, ts := ev.Body(), now()
	l.sent(ts, body)
	sig := relSign(secret, ts, body)

	app.mode.Store(relAppSlow) // 2.5 s
	start := time.Now()
	status, reply, err := relPost(relClient, g, "/webhooks/reready", body, sig)
	took := time.Since(start)
	app.mode.Store(relAppOK)
	if err != nil {
		t.Fatal(err)
	}
	if status != http.StatusGatewayTimeout {
		t.Fatalf("slow upstream: %d %q, want 504", status, reply)
	}
	if took < 900*time.Millisecond || took > 2300*time.Millisecond {
		t.Errorf("504 after %s, want about response_header_timeout (1s)", took)
	}
	status, reply, err = relPost(relClient, g, "/webhooks/reready", body, sig)
	if err != nil || status != http.StatusOK || reply != `{"ok":true}` {
		t.Fatalf("retry after the 504: %d %q %v, want the app's 200", status, reply, err)
	}
	// The slow first request reaches the app too, late: delivery is at
	// least once, and the app must treat device_return_id + state as
	// idempotent.
	deadline := time.Now().Add(5 * time.Second)
	for len(app.requests(ev.ID)) < 2 && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if n := len(app.requests(ev.ID)); n != 2 {
		t.Errorf("the app got %d requests for the event, want 2 (the late one and the retry)", n)
	}
	relStopAndScan(t, g, l, 0, true)
	t.Logf("RELIABILITY upstream-timeout: status=504 after=%s retry=200 forwarded", took.Round(time.Millisecond))
}

// Bodies that stall, trickle or are abandoned, and Expect: 100-continue,
// against the Python app.
func TestReliabilitySlowBody(t *testing.T) {
	const secret = "ssk_stall_6d2f90ab14"
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
		body_timeout 1s
		max_body 1KiB
	}
	reverse_proxy /webhooks/reready {{python}}`, nil, secret)
	l := relNewLedger([]string{secret})
	signed := func() ([]byte, string) {
		body, ts := harness.NewEvent("failed").Body(), now()
		l.sent(ts, body)
		return body, relSign(secret, ts, body)
	}
	rejected := 0

	// Headers and part of the body, then nothing (or one byte now and
	// then, which must not extend body_timeout): 408 after about 1s, and
	// the connection closed.
	for _, c := range []struct {
		name    string
		chunked bool
		trickle bool
	}{
		{"stall, Content-Length", false, false},
		{"stall, chunked", true, false},
		{"trickle, Content-Length", false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			body, sig := signed()
			m := mark(t)
			conn := relDial(t, g)
			n, part := len(body), string(body[:20])
			if c.chunked {
				n, part = -1, fmt.Sprintf("%x\r\n%s\r\n", 20, part)
			}
			start := time.Now()
			io.WriteString(conn, relHead(g, "/webhooks/reready", n, "X-ReReady-Signature-512", sig)+part)
			done := make(chan struct{})
			defer close(done)
			if c.trickle {
				go func() {
					for i := 20; i < len(body)-1; i++ {
						select {
						case <-done:
							return
						case <-time.After(200 * time.Millisecond):
						}
						if _, err := conn.Write(body[i : i+1]); err != nil {
							return
						}
					}
				}()
			}
			br := bufio.NewReader(conn)
			resp, err := http.ReadResponse(br, nil)
			took := time.Since(start)
			if err != nil {
				t.Fatalf("no answer after %s: %v", took, err)
			}
			io.Copy(io.Discard, resp.Body)
			if resp.StatusCode != http.StatusRequestTimeout {
				t.Errorf("%s, want 408", resp.Status)
			}
			if took < 900*time.Millisecond || took > 3*time.Second {
				t.Errorf("answered after %s, want about body_timeout (1s)", took)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("connection after the 408: %v, want it closed (EOF)", err)
			}
			rejected++
			m.none(t)
		})
	}

	// The client goes away mid-body, with a FIN or a RST: nothing is
	// forwarded, the failure is logged, and the next request is served.
	for _, rst := range []bool{false, true} {
		t.Run(fmt.Sprintf("abort mid-body, rst=%t", rst), func(t *testing.T) {
			body, sig := signed()
			m := mark(t)
			conn := relDial(t, g)
			local := conn.LocalAddr().String()
			io.WriteString(conn, relHead(g, "/webhooks/reready", len(body), "X-ReReady-Signature-512", sig))
			conn.Write(body[:len(body)/2])
			time.Sleep(100 * time.Millisecond)
			if rst {
				conn.SetLinger(0)
			}
			conn.Close()
			g.waitLog(t, "body_read_failed", local)
			rejected++
			m.none(t)

			ev := harness.NewEvent("complete")
			body, ts := ev.Body(), now()
			l.sent(ts, body)
			sig = relSign(secret, ts, body)
			m = mark(t)
			ok(t, g.post(t, "/webhooks/reready", body, "X-ReReady-Signature-512", sig))
			delivered(t, m.one(t, python), ev, body, "hmac", fmt.Sprint(ts), sig)
		})
	}

	// Expect: 100-continue with a Content-Length over max_body: 413 at
	// once, no 100 Continue, no wait for the body, connection closed.
	t.Run("100-continue, oversized", func(t *testing.T) {
		_, sig := signed()
		m := mark(t)
		conn := relDial(t, g)
		start := time.Now()
		io.WriteString(conn, relHead(g, "/webhooks/reready", 10<<20, "X-ReReady-Signature-512", sig, "Expect", "100-continue"))
		br := bufio.NewReader(conn)
		line, err := br.ReadString('\n')
		took := time.Since(start)
		if err != nil {
			t.Fatalf("reading the status line: %v", err)
		}
		if !strings.HasPrefix(line, "HTTP/1.1 413 ") {
			t.Fatalf("first status line %q, want HTTP/1.1 413 (and no 100 Continue)", strings.TrimSpace(line))
		}
		if took > 500*time.Millisecond {
			t.Errorf("413 after %s: the gateway waited for a body it should not read", took)
		}
		rest, err := io.ReadAll(br) // the rest of the answer, then EOF
		if err != nil {
			t.Errorf("connection after the 413: %v, want it closed", err)
		}
		if strings.Contains(string(rest), "100 Continue") {
			t.Errorf("the gateway sent 100 Continue after its 413: %q", rest)
		}
		rejected++
		m.none(t)
	})

	// And a genuine delivery with Expect: 100-continue still gets its 100
	// and goes through.
	t.Run("100-continue, valid", func(t *testing.T) {
		ev := harness.NewEvent("not_returned")
		body, ts := ev.Body(), now()
		l.sent(ts, body)
		sig := relSign(secret, ts, body)
		m := mark(t)
		conn := relDial(t, g)
		io.WriteString(conn, relHead(g, "/webhooks/reready", len(body), "X-ReReady-Signature-512", sig, "Expect", "100-continue"))
		br := bufio.NewReader(conn)
		resp, err := http.ReadResponse(br, nil)
		if err != nil || resp.StatusCode != http.StatusContinue {
			t.Fatalf("first answer %v %v, want 100 Continue", resp, err)
		}
		conn.Write(body)
		resp, err = http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		ok(t, reply{resp.StatusCode, resp.Header, string(b)})
		delivered(t, m.one(t, python), ev, body, "hmac", fmt.Sprint(ts), sig)
	})
	relStopAndScan(t, g, l, rejected, false)
	t.Logf("RELIABILITY slow-body: stalled_or_trickled=3 answered_408=3 aborted=2 forwarded=0 expect_413=1")
}

// 256 uploads that send their head and a few bytes, then stall or trickle,
// hold connections for body_timeout (3s); meanwhile genuine deliveries are
// served within 2s each, and every slow upload ends in 408, unforwarded.
func TestReliabilitySlowUploadFlood(t *testing.T) {
	const secret = "ssk_flood_b2e47a9c05"
	const slow, valid = 256, 8
	app := relStartApp(t, "")
	g := startGateway(t, `
	reready_verify /webhooks/reready {
		secret `+secret+`
		body_timeout 3s
	}
	reverse_proxy /webhooks/reready `+app.addr, nil, secret)
	l := relNewLedger([]string{secret})

	type result struct {
		status int
		took   time.Duration
		err    error
	}
	results := make(chan result, slow)
	var headsSent sync.WaitGroup
	headsSent.Add(slow)
	stop := make(chan struct{})
	for i := 0; i < slow; i++ {
		body, ts := harness.NewEvent("complete").Body(), now()
		l.sent(ts, body)
		sig := relSign(secret, ts, body)
		go func(i int) {
			start := time.Now()
			c, err := net.DialTimeout("tcp", strings.TrimPrefix(g.Base, "http://"), 5*time.Second)
			if err != nil {
				headsSent.Done()
				results <- result{err: err}
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(15 * time.Second))
			_, err = io.WriteString(c, relHead(g, "/webhooks/reready", len(body), "X-ReReady-Signature-512", sig)+string(body[:8]))
			headsSent.Done()
			if err != nil {
				results <- result{err: err}
				return
			}
			if i%2 == 1 { // trickle a byte every 250ms
				go func() {
					for j := 8; j < len(body)-1; j++ {
						select {
						case <-stop:
							return
						case <-time.After(250 * time.Millisecond):
						}
						if _, err := c.Write(body[j : j+1]); err != nil {
							return
						}
					}
				}()
			}
			resp, err := http.ReadResponse(bufio.NewReader(c), nil)
			if err != nil {
				results <- result{err: err, took: time.Since(start)}
				return
			}
			resp.Body.Close()
			results <- result{status: resp.StatusCode, took: time.Since(start)}
		}(i)
	}
	defer close(stop)
	headsSent.Wait()
	time.Sleep(300 * time.Millisecond)

	var maxLatency time.Duration
	okCount := 0
	floodStart := time.Now()
	for i := 0; i < valid; i++ {
		ev := harness.NewEvent("pending_outbound_shipment")
		body, ts := ev.Body(), now()
		l.sent(ts, body)
		start := time.Now()
		status, reply, err := relPost(relClient, g, "/webhooks/reready", body, relSign(secret, ts, body))
		took := time.Since(start)
		maxLatency = max(maxLatency, took)
		switch {
		case err != nil || status != http.StatusOK:
			t.Errorf("valid request %d during the flood: %d %q %v, want 200", i, status, reply, err)
		case took > 2*time.Second:
			t.Errorf("valid request %d during the flood took %s, want under 2s", i, took)
		case len(app.requests(ev.ID)) != 1:
			t.Errorf("valid request %d: the app got it %d times, want 1", i, len(app.requests(ev.ID)))
		default:
			okCount++
		}
		time.Sleep(100 * time.Millisecond)
	}
	if since := time.Since(floodStart); since > 2500*time.Millisecond {
		t.Errorf("the valid requests ran %s, past the flood's 3s body_timeout; the test proves nothing", since)
	}

	answered408, other := 0, 0
	var minTook, maxTook time.Duration
	for i := 0; i < slow; i++ {
		r := <-results
		if r.err == nil && r.status == http.StatusRequestTimeout {
			answered408++
			if minTook == 0 || r.took < minTook {
				minTook = r.took
			}
			maxTook = max(maxTook, r.took)
			continue
		}
		other++
		if other <= 5 {
			t.Errorf("slow upload: %d %v after %s, want 408", r.status, r.err, r.took)
		}
	}
	if minTook < 2800*time.Millisecond || maxTook > 8*time.Second {
		t.Errorf("slow uploads answered between %s and %s, want about body_timeout (3s)", minTook, maxTook)
	}
	if n := app.total(); n != okCount {
		t.Errorf("the app got %d requests, want only the %d valid ones", n, okCount)
	}
	relStopAndScan(t, g, l, slow, false)
	t.Logf("RELIABILITY flood: slow_uploads=%d answered_408=%d other=%d (408 after %s-%s) valid=%d/%d max_latency=%s forwarded_slow=%d",
		slow, answered408, other, minTook.Round(time.Millisecond), maxTook.Round(time.Millisecond),
		okCount, valid, maxLatency.Round(time.Millisecond), app.total()-okCount)
}

// relConnError classifies a transport error for the load figures.
func relConnError(err error) string {
	switch {
	case errors.Is(err, syscall.ECONNRESET):
		return "reset"
	case errors.Is(err, syscall.ECONNREFUSED):
		return "refused"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return "eof"
	case errors.Is(err, syscall.EPIPE):
		return "broken_pipe"
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return "timeout"
	}
	return "other"
}
