//go:build fullsuite

package realbin

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/reready-verify/caddy-reready-verify/internal/rrtest"
	"github.com/reready-verify/caddy-reready-verify/internal/rrtest/harness"
)

// Bounds on every wait, so a broken build or binary fails instead of hanging.
const (
	readyTimeout = harness.ReadyTimeout
	replyTimeout = harness.ReplyTimeout
	logTimeout   = 3 * time.Second
)

var (
	root     string // repository root
	caddyBin string // root/bin/caddy

	// The upstream apps, started once for the whole run.
	python, node, php *upstream
	allApps           []*upstream
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	if root, err = harness.Root(); err != nil {
		return fatal("%v", err)
	}
	var missing []string
	for _, tool := range []string{"python3", "node", "php", "ruby", "openssl", "curl"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fatal("missing %s: run scripts/deps.sh (make test does)", strings.Join(missing, ", "))
	}

	// REALBIN_CADDY runs the suite on another build of the same tree, such
	// as one with the race detector (XCADDY_RACE_DETECTOR=1 xcaddy build ...).
	if caddyBin, err = harness.CaddyBin(); err != nil {
		return fatal("%v", err)
	}

	tmp, err := os.MkdirTemp("", "realbin-")
	if err != nil {
		return fatal("%v", err)
	}
	defer os.RemoveAll(tmp)

	apps := filepath.Join(root, "integration", "apps")
	python = &upstream{name: "python", argv: []string{"python3", "app.py"}}
	node = &upstream{name: "node", argv: []string{"node", "app.js"}}
	php = &upstream{name: "php", argv: []string{"php", "-S", "127.0.0.1:{port}", "index.php"}}
	allApps = []*upstream{python, node, php}
	defer func() {
		for _, u := range allApps {
			u.stop()
		}
	}()
	for _, u := range allApps {
		if err := u.start(filepath.Join(apps, u.name), filepath.Join(tmp, u.name+".jsonl")); err != nil {
			return fatal("%v", err)
		}
	}
	return m.Run()
}

func fatal(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "realbin: "+format+"\n", args...)
	return 1
}

// waitListening polls addr until it accepts a connection, exited is closed,
// or readyTimeout passes.
func waitListening(addr string, exited <-chan struct{}) error {
	deadline := time.Now().Add(readyTimeout)
	for {
		select {
		case <-exited:
			return fmt.Errorf("process exited before listening on %s", addr)
		default:
		}
		if c, err := net.DialTimeout("tcp", addr, 200*time.Millisecond); err == nil {
			c.Close()
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nothing listening on %s after %s", addr, readyTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// ---- upstream apps -------------------------------------------------------

// upstream is one of the example apps, recording each request it gets as a
// JSON line in its RECORD file.
type upstream struct {
	name   string
	argv   []string // {port} stands for its port
	addr   string   // 127.0.0.1:port
	record string
	cmd    *exec.Cmd
	out    harness.SyncBuffer
	exited chan struct{}
}

// start runs u in dir with PORT and RECORD set and waits until it listens.
func (u *upstream) start(dir, record string) error {
	port, err := harness.ReservePort()
	if err != nil {
		return err
	}
	u.addr = fmt.Sprintf("127.0.0.1:%d", port)
	u.record = record
	if err := os.WriteFile(record, nil, 0o600); err != nil {
		return err
	}
	argv := make([]string, len(u.argv))
	for i, a := range u.argv {
		argv[i] = strings.ReplaceAll(a, "{port}", fmt.Sprint(port))
	}
	u.cmd = exec.Command(argv[0], argv[1:]...)
	u.cmd.Dir = dir
	u.cmd.Env = append(os.Environ(), fmt.Sprintf("PORT=%d", port), "RECORD="+record)
	u.cmd.Stdout, u.cmd.Stderr = &u.out, &u.out
	// Its own process group, so stop also ends whatever a wrapper (a
	// version-manager shim, say) started under it.
	u.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := u.cmd.Start(); err != nil {
		return fmt.Errorf("%s app: %v", u.name, err)
	}
	u.exited = make(chan struct{})
	go func() { u.cmd.Wait(); close(u.exited) }()
	if err := waitListening(u.addr, u.exited); err != nil {
		return fmt.Errorf("%s app: %v\n%s", u.name, err, u.out.String())
	}
	return nil
}

func (u *upstream) stop() {
	if u.cmd == nil || u.cmd.Process == nil {
		return
	}
	syscall.Kill(-u.cmd.Process.Pid, syscall.SIGKILL)
	<-u.exited
}

func (u *upstream) size(t *testing.T) int64 {
	t.Helper()
	fi, err := os.Stat(u.record)
	if err != nil {
		t.Fatalf("%s app record: %v", u.name, err)
	}
	return fi.Size()
}

// recordsSince returns the records u appended after offset.
func (u *upstream) recordsSince(t *testing.T, offset int64) []record {
	t.Helper()
	data, err := os.ReadFile(u.record)
	if err != nil {
		t.Fatalf("%s app record: %v", u.name, err)
	}
	var recs []record
	for _, line := range strings.Split(strings.TrimSpace(string(data[offset:])), "\n") {
		if line == "" {
			continue
		}
		var r record
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("%s app wrote a bad record line %q: %v", u.name, line, err)
		}
		recs = append(recs, r)
	}
	return recs
}

// marks holds where each app's record file ended before a request. Tests in
// this package run one at a time (none calls t.Parallel), so what an app
// records after a mark comes from the request under test.
type marks map[*upstream]int64

func mark(t *testing.T) marks {
	t.Helper()
	m := marks{}
	for _, u := range allApps {
		m[u] = u.size(t)
	}
	return m
}

// none fails unless no app recorded anything since m.
func (m marks) none(t *testing.T) {
	t.Helper()
	for _, u := range allApps {
		if recs := u.recordsSince(t, m[u]); len(recs) > 0 {
			t.Errorf("the %s app received %d request(s) it should not have; first: %s", u.name, len(recs), recs[0])
		}
	}
}

// one returns the single record app u made since m, failing if any other
// app recorded something.
func (m marks) one(t *testing.T, u *upstream) record {
	t.Helper()
	for _, o := range allApps {
		if o != u {
			if recs := o.recordsSince(t, m[o]); len(recs) > 0 {
				t.Errorf("the %s app received %d request(s) meant for the %s app", o.name, len(recs), u.name)
			}
		}
	}
	recs := u.recordsSince(t, m[u])
	if len(recs) != 1 {
		t.Fatalf("the %s app recorded %d requests, want 1: %v", u.name, len(recs), recs)
	}
	return recs[0]
}

// record is one request as an app saw it. Header-derived fields are nil
// when the header was absent.
type record map[string]any

func (r record) String() string { b, _ := json.Marshal(map[string]any(r)); return string(b) }

func (r record) body(t *testing.T) []byte {
	t.Helper()
	s, _ := r["body_b64"].(string)
	b, err := base64.StdEncoding.DecodeString(s)
	if err != nil {
		t.Fatalf("record body_b64: %v", err)
	}
	return b
}

// rereadyHeaders returns the X-ReReady-* headers the app received, keyed by
// lower-cased name as sent (so an X-ReReady_State would show as such).
func (r record) rereadyHeaders() map[string]string {
	out := map[string]string{}
	m, _ := r["reready_headers"].(map[string]any)
	for k, v := range m {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// ---- the ReReady side ------------------------------------------------------

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

// macOf returns the v part of a signature value.
func macOf(sig string) string { _, v, _ := strings.Cut(sig, ",v="); return v }

// ---- the gateway -----------------------------------------------------------

// gateway is a running bin/caddy.
type gateway struct{ *harness.Gateway }

// startGateway writes a Caddyfile whose single site, http://127.0.0.1:<free
// port>, holds site (with {{python}}, {{node}} and {{php}} replaced by the
// apps' addresses), runs bin/caddy on it with env added, waits until it
// answers and stops it when the test ends. secrets (and tokens) must never
// appear in its logs.
func startGateway(t *testing.T, site string, env []string, secrets ...string) *gateway {
	t.Helper()
	return startGatewayWith(t, "", site, env, secrets...)
}

// startGatewayWith is startGateway with more global options.
func startGatewayWith(t *testing.T, global, site string, env []string, secrets ...string) *gateway {
	t.Helper()
	return &gateway{harness.Start(t, caddyBin, 0, global, withApps(site), env, secrets...)}
}

// sitePorts returns two ports on 127.0.0.1 that were free a moment ago:
// one for the admin endpoint, one for the site.
func sitePorts(t *testing.T) (admin, site int) {
	t.Helper()
	return harness.FreePort(t), harness.FreePort(t)
}

// runCaddyfile runs bin/caddy on caddyfile, which serves base, until the
// test ends.
func runCaddyfile(t *testing.T, caddyfile, base string, env []string, secrets ...string) *gateway {
	t.Helper()
	return runCaddyfileBin(t, caddyBin, caddyfile, base, env, secrets...)
}

// testBin is bin/caddy-test: bin/caddy plus the test storage modules of
// integration/teststorage, built the first time a test asks for it.
var testBin struct {
	once sync.Once
	path string
	err  error
}

// caddyTestBin returns the path of bin/caddy-test, building it if needed.
func caddyTestBin(t *testing.T) string {
	t.Helper()
	testBin.once.Do(func() {
		if testBin.path = os.Getenv("REALBIN_CADDY_TEST"); testBin.path != "" {
			return
		}
		testBin.path, testBin.err = harness.Build("test")
	})
	if testBin.err != nil {
		t.Fatal(testBin.err)
	}
	return testBin.path
}

// runCaddyfileBin runs the Caddy binary bin on caddyfile, which serves
// base, until the test ends.
func runCaddyfileBin(t *testing.T, bin, caddyfile, base string, env []string, secrets ...string) *gateway {
	t.Helper()
	return &gateway{harness.Run(t, bin, caddyfile, base, env, secrets...)}
}

func withApps(s string) string {
	return strings.NewReplacer("{{python}}", python.addr, "{{node}}", node.addr, "{{php}}", php.addr).Replace(s)
}

// waitLog waits until caddy has logged a line containing every one of
// parts (its output arrives through a pipe, a moment after the response).
func (g *gateway) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	waitLogSince(t, g, 0, parts...)
}

// logOffset is where caddy's log ends now, for waitLogSince.
func logOffset(g *gateway) int { return len(g.Logs.String()) }

// waitLogSince waits until caddy has logged, after offset, a line holding
// every one of parts.
func waitLogSince(t *testing.T, g *gateway, offset int, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(logTimeout)
	for {
		for _, line := range strings.Split(g.Logs.String()[offset:], "\n") {
			found := true
			for _, p := range parts {
				found = found && strings.Contains(line, p)
			}
			if found {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Errorf("caddy logged no line containing all of %q", parts)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// reply is the gateway's answer.
type reply struct {
	status int
	header http.Header
	body   string
}

// request sends one request through the gateway with Go's HTTP client. hdr
// holds name, value pairs, sent with the names exactly as given (so
// X-ReReady_State stays as spelled). Content-Type is application/json.
func (g *gateway) request(t *testing.T, method, target string, body []byte, hdr ...string) reply {
	t.Helper()
	req, err := http.NewRequest(method, g.Base+target, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header["Content-Type"] = []string{"application/json"}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header[hdr[i]] = append(req.Header[hdr[i]], hdr[i+1])
	}
	client := &http.Client{Timeout: replyTimeout, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: reading the reply: %v", method, target, err)
	}
	return reply{resp.StatusCode, resp.Header, string(b)}
}

func (g *gateway) post(t *testing.T, target string, body []byte, hdr ...string) reply {
	t.Helper()
	return g.request(t, http.MethodPost, target, body, hdr...)
}

// curlChunked POSTs body with Transfer-Encoding: chunked through curl (its
// reply has no headers).
func (g *gateway) curlChunked(t *testing.T, target string, body []byte, hdr ...string) reply {
	t.Helper()
	dir := t.TempDir()
	in, out := filepath.Join(dir, "body"), filepath.Join(dir, "reply")
	if err := os.WriteFile(in, body, 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"-sS", "--max-time", "10", "-o", out, "-w", "%{http_code}",
		"-H", "Content-Type: application/json", "-H", "Transfer-Encoding: chunked", "-H", "Expect:",
		"--data-binary", "@" + in}
	for i := 0; i+1 < len(hdr); i += 2 {
		args = append(args, "-H", hdr[i]+": "+hdr[i+1])
	}
	args = append(args, g.Base+target)
	cmd := exec.Command("curl", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	code, err := cmd.Output()
	if err != nil {
		t.Fatalf("curl: %v\n%s", err, stderr.String())
	}
	var status int
	fmt.Sscan(string(code), &status)
	got, _ := os.ReadFile(out)
	return reply{status, http.Header{}, string(got)}
}

// ---- assertions ------------------------------------------------------------

// delivered checks that rec is the app's view of ev (with body as the exact
// bytes sent), verified as verified, with signed timestamp ts ("" when no
// signature was checked), and that the only X-ReReady-* headers the app got
// are the gateway's (plus the signature, which passes through).
func delivered(t *testing.T, rec record, ev harness.Event, body []byte, verified, ts, signature string) {
	t.Helper()
	nullable := func(s string) any {
		if s == "" {
			return nil
		}
		return s
	}
	want := map[string]any{
		"method":           "POST",
		"state":            ev.State,
		"device_return_id": ev.ID,
		"test":             fmt.Sprint(ev.Test),
		"verified":         verified,
		"timestamp":        nullable(ts),
		"serial_number":    nullable(ev.Serial),
		"ticket_url":       nullable(ev.Ticket),
		"url":              ev.URL(),
		"content_length":   fmt.Sprint(len(body)),
	}
	for k, v := range want {
		if rec[k] != v {
			t.Errorf("%s app: %s = %#v, want %#v", rec["app"], k, rec[k], v)
		}
	}
	if got := rec.body(t); !bytes.Equal(got, body) {
		t.Errorf("%s app: body differs from what was sent\n got: %q\nwant: %q", rec["app"], got, body)
	}

	wantHdr := map[string]string{
		"x-reready-state":            ev.State,
		"x-reready-device-return-id": ev.ID,
		"x-reready-test":             fmt.Sprint(ev.Test),
		"x-reready-url":              ev.URL(),
		"x-reready-verified":         verified,
	}
	for k, v := range map[string]string{
		"x-reready-timestamp":     ts,
		"x-reready-serial-number": ev.Serial,
		"x-reready-ticket-url":    ev.Ticket,
		"x-reready-signature-512": signature,
	} {
		if v != "" {
			wantHdr[k] = v
		}
	}
	got := rec.rereadyHeaders()
	// The delivery id derives from the MAC of a signed delivery (checked
	// against the signature an independent signer made); a token-only one
	// gets the arrival time and random digits.
	idPrefix := `[0-9]+`
	if ts != "" {
		idPrefix = ts
	}
	if harness.SigValue.MatchString(signature) { // one v: its MAC is the one that matched
		wantHdr["x-reready-delivery-id"] = deliveryIDOf(t, signature)
	} else if id := got["x-reready-delivery-id"]; !regexp.MustCompile(`^` + idPrefix + `-[0-9a-f]{32}$`).MatchString(id) {
		t.Errorf("%s app: header x-reready-delivery-id = %q, want %s-<32 hex>", rec["app"], id, idPrefix)
	} else {
		wantHdr["x-reready-delivery-id"] = id
	}
	for k, v := range wantHdr {
		if got[k] != v {
			t.Errorf("%s app: header %s = %q, want %q", rec["app"], k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := wantHdr[k]; !ok {
			t.Errorf("%s app: got header %s: %q, which the gateway should have removed", rec["app"], k, v)
		}
	}
}

// ok checks the app's 200 {"ok":true} came back through the gateway.
func ok(t *testing.T, r reply) {
	t.Helper()
	if r.status != http.StatusOK || r.body != `{"ok":true}` {
		t.Fatalf("reply %d %q, want 200 {\"ok\":true} from the app", r.status, r.body)
	}
}

func now() int64 { return time.Now().Unix() }
