//go:build fullsuite

package realbin

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// Helpers of the store-and-forward tests: an app that can be down (nothing
// listening: connection refused) and come up on the same address, answering
// by a rule; the admin API's queue and journal; killing a gateway.

// queueTimeout bounds waits for a redelivery. Backoff steps are 1s, 5s, 15s
// (±20 %); the tests arrange kicks or Retry-After so a wait normally ends
// within a few seconds, and this bound only stops a broken build.
const queueTimeout = 40 * time.Second

// qApp is an upstream at a fixed 127.0.0.1 address that can be down.
type qApp struct {
	addr string

	mu   sync.Mutex
	srv  *http.Server
	done chan struct{}
	recs []*qRec
	rule func(*qRec) qAnswer
}

// qRec is one request the app received.
type qRec struct {
	at       time.Time
	host     string
	uri      string
	header   http.Header
	body     []byte
	status   int       // what the app answered; 0 until it did (or if abandoned)
	answered time.Time // when it answered
}

// id is the request's X-ReReady-Delivery-Id.
func (r *qRec) id() string { return r.header.Get("X-Reready-Delivery-Id") }

// returnID is the request's X-ReReady-Device-Return-Id.
func (r *qRec) returnID() string { return r.header.Get("X-Reready-Device-Return-Id") }

// qAnswer is how the app answers a request: status (0: 200 {"ok":true}),
// extra headers, body (default by status), after hold is closed if set,
// and after delay.
type qAnswer struct {
	status int
	header map[string]string
	body   string
	hold   <-chan struct{}
	delay  time.Duration
}

// newQApp reserves an address for an app that is down until up is called.
func newQApp(t *testing.T) *qApp {
	t.Helper()
	port, err := freePort()
	if err != nil {
		t.Fatal(err)
	}
	a := &qApp{addr: fmt.Sprintf("127.0.0.1:%d", port)}
	t.Cleanup(a.down)
	return a
}

// setRule sets how the app answers from now on (nil: 200). The rule runs
// under the app's lock, one request at a time, and must not block.
func (a *qApp) setRule(rule func(*qRec) qAnswer) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.rule = rule
}

// up starts listening on the app's address.
func (a *qApp) up(t *testing.T) {
	t.Helper()
	var l net.Listener
	var err error
	for deadline := time.Now().Add(5 * time.Second); ; {
		if l, err = net.Listen("tcp", a.addr); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("app: listening on %s: %v", a.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	srv := &http.Server{Handler: http.HandlerFunc(a.serve), ReadHeaderTimeout: 10 * time.Second}
	done := make(chan struct{})
	go func() { srv.Serve(l); close(done) }()
	a.mu.Lock()
	a.srv, a.done = srv, done
	a.mu.Unlock()
}

// down closes the listener and every connection: connection refused.
func (a *qApp) down() {
	a.mu.Lock()
	srv, done := a.srv, a.done
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		srv.Close()
		<-done
	}
}

func (a *qApp) serve(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	rec := &qRec{at: time.Now(), host: r.Host, uri: r.RequestURI, header: r.Header.Clone(), body: body}
	a.mu.Lock()
	a.recs = append(a.recs, rec)
	var ans qAnswer
	if a.rule != nil {
		ans = a.rule(rec) // under the lock: rules keep state
	}
	a.mu.Unlock()
	if ans.hold != nil {
		select {
		case <-ans.hold:
		case <-r.Context().Done():
			return
		case <-time.After(30 * time.Second):
		}
	}
	if ans.delay > 0 {
		select {
		case <-time.After(ans.delay):
		case <-r.Context().Done():
			return
		}
	}
	if ans.status == 0 {
		ans.status = http.StatusOK
	}
	if ans.body == "" {
		ans.body = `{"ok":true}`
		if ans.status >= 300 {
			ans.body = `{"ok":false}`
		}
	}
	// Noted before answering, so anything the gateway does after the
	// answer comes later.
	a.mu.Lock()
	rec.status, rec.answered = ans.status, time.Now()
	a.mu.Unlock()
	for k, v := range ans.header {
		w.Header().Set(k, v)
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(ans.status)
	io.WriteString(w, ans.body)
}

// records returns a copy of what the app received so far.
func (a *qApp) records() []qRec {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]qRec, len(a.recs))
	for i, r := range a.recs {
		out[i] = *r
	}
	return out
}

// forID returns the requests that carried delivery id.
func (a *qApp) forID(id string) []qRec {
	var out []qRec
	for _, r := range a.records() {
		if r.id() == id {
			out = append(out, r)
		}
	}
	return out
}

// delivered counts the requests with delivery id that the app answered 2xx.
func (a *qApp) delivered(id string) int {
	n := 0
	for _, r := range a.forID(id) {
		if r.status >= 200 && r.status < 300 {
			n++
		}
	}
	return n
}

// waitDelivered waits (bounded) until the app has answered id 2xx, and
// returns that request.
func (a *qApp) waitDelivered(t *testing.T, id string, timeout time.Duration) qRec {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range a.forID(id) {
			if r.status >= 200 && r.status < 300 {
				return r
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("delivery %s did not reach the app within %s (it got %d request(s) with that id)", id, timeout, len(a.forID(id)))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// waitUntil polls cond until it holds or timeout passes.
func waitUntil(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("after %s: %s", timeout, what)
		}
		time.Sleep(25 * time.Millisecond)
	}
}

// queueSite is a site whose /hooks/* route verifies with secret and queue
// options opts ("" for `queue` with defaults) in front of upstream.
func queueSite(secret, opts, upstream string) string {
	q := "queue"
	if opts != "" {
		q = "queue {\n\t\t\t" + opts + "\n\t\t}"
	}
	return fmt.Sprintf(`
	reready_verify /hooks/* {
		secret %s
		%s
	}
	reverse_proxy /hooks/* %s`, secret, q, upstream)
}

// storageGlobal is the global option putting Caddy's storage in dir.
func storageGlobal(dir string) string { return "\tstorage file_system " + dir }

// startGatewayBinOn is startGatewayWith with the Caddy binary bin, on a
// given port (0 picks a free one). A restarted gateway,
// or another of a fleet, listens where the first did: a queued delivery is
// redelivered through a server on the port it arrived on. Caddy binds with
// SO_REUSEPORT, so two gateways can share the port while both run (the
// kernel spreads connections between them); the readiness probe may then
// be answered by the other one, so this waits for the new one's own
// "serving initial configuration" log line too.
func startGatewayBinOn(t *testing.T, bin string, port int, global, site string, env []string, secrets ...string) *gateway {
	t.Helper()
	adminPort, err := freePort()
	if err == nil && port == 0 {
		port, err = freePort()
	}
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	g := runCaddyfileBin(t, bin, gatewayCaddyfile(adminPort, global, base, site), base, env, secrets...)
	waitUntil(t, "the gateway did not log that it serves its configuration", readyTimeout, func() bool {
		return strings.Contains(g.logs.String(), "serving initial configuration")
	})
	return g
}

// portOf is the port a gateway's site listens on.
func portOf(t *testing.T, g *gateway) int {
	t.Helper()
	_, p, err := net.SplitHostPort(strings.TrimPrefix(g.base, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	port, err := strconv.Atoi(p)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// kill ends the gateway with SIGKILL and waits for it.
func (g *gateway) kill(t *testing.T) {
	t.Helper()
	if err := g.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatalf("SIGKILL: %v", err)
	}
	<-g.exited
}

// ---- admin API ---------------------------------------------------------------

// adminDo sends a request to the gateway's admin endpoint.
func adminDo(t *testing.T, g *gateway, method, path string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, "http://"+adminAddr(t, g)+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := (&http.Client{Timeout: 30 * time.Second}).Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	return resp.StatusCode, b
}

// obj is a JSON object of the admin API.
type obj map[string]any

func (o obj) str(k string) string { s, _ := o[k].(string); return s }
func (o obj) num(k string) int    { f, _ := o[k].(float64); return int(f) }

// adminList GETs path, wants 200 and a JSON array of objects.
func adminList(t *testing.T, g *gateway, path string) []obj {
	t.Helper()
	status, b := adminDo(t, g, http.MethodGet, path)
	if status != http.StatusOK {
		t.Fatalf("GET %s: %d %s", path, status, b)
	}
	var out []obj
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("GET %s: %v\n%s", path, err, b)
	}
	return out
}

// queueList is GET /reready/queue.
func queueList(t *testing.T, g *gateway) []obj {
	t.Helper()
	return adminList(t, g, "/reready/queue")
}

// queueItem returns the listed item id, or nil.
func queueItem(t *testing.T, g *gateway, id string) obj {
	t.Helper()
	for _, it := range queueList(t, g) {
		if it.str("id") == id {
			return it
		}
	}
	return nil
}

// waitItem waits until item id is listed with status ("" for gone).
func waitItem(t *testing.T, g *gateway, id, status string, timeout time.Duration) obj {
	t.Helper()
	var it obj
	waitUntil(t, fmt.Sprintf("queued delivery %s is not %q (last seen: %v)", id, status, it), timeout, func() bool {
		it = queueItem(t, g, id)
		if status == "" {
			return it == nil
		}
		return it != nil && it.str("status") == status
	})
	return it
}

// journalQuery is GET /reready/deliveries?query.
func journalQuery(t *testing.T, g *gateway, query string) []obj {
	t.Helper()
	return adminList(t, g, "/reready/deliveries?"+query)
}

// journalFor returns the journal entries of delivery id, oldest first.
func journalFor(t *testing.T, g *gateway, id string) []obj {
	t.Helper()
	var out []obj
	all := journalQuery(t, g, "limit=10000")
	for i := len(all) - 1; i >= 0; i-- {
		if all[i].str("delivery_id") == id {
			out = append(out, all[i])
		}
	}
	return out
}

// waitJournal waits until delivery id has an entry with outcome, and
// returns the newest such entry.
func waitJournal(t *testing.T, g *gateway, id, outcome string, timeout time.Duration) obj {
	t.Helper()
	var found obj
	waitUntil(t, fmt.Sprintf("no %q journal entry for %s", outcome, id), timeout, func() bool {
		for _, e := range journalFor(t, g, id) {
			if e.str("outcome") == outcome {
				found = e
			}
		}
		return found != nil
	})
	return found
}

// wantJSONError checks an admin API error answer: status and a JSON
// {"error": ...} holding substr.
func wantJSONError(t *testing.T, what string, status int, b []byte, wantStatus int, substr string) {
	t.Helper()
	if status != wantStatus {
		t.Errorf("%s: %d %s, want %d", what, status, b, wantStatus)
		return
	}
	var e struct {
		Error *string `json:"error"`
	}
	if err := json.Unmarshal(b, &e); err != nil || e.Error == nil {
		t.Errorf("%s: body %s is not a JSON {\"error\": ...}", what, b)
		return
	}
	if !strings.Contains(*e.Error, substr) {
		t.Errorf("%s: error %q does not mention %q", what, *e.Error, substr)
	}
}

// queueFiles lists the item files under a file_system storage root.
func queueFiles(t *testing.T, storage string) []string {
	t.Helper()
	entries, err := os.ReadDir(filepath.Join(storage, "reready_verify", "queue", "items"))
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range entries {
		out = append(out, e.Name())
	}
	return out
}

// readTree returns every file's bytes under dir, joined, for "is X stored
// anywhere" checks.
func readTree(t *testing.T, dir string) []byte {
	t.Helper()
	var all bytes.Buffer
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			b, _ := os.ReadFile(p)
			all.Write(b)
			all.WriteByte('\n')
		}
		return nil
	})
	return all.Bytes()
}
