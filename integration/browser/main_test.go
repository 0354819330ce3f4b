package browser

import (
	"bytes"
	"context"
	"crypto/rand"
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
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
)

// Bounds on every wait, so a broken build, binary or browser fails instead
// of hanging.
const (
	buildTimeout = 15 * time.Minute // a cold xcaddy build takes ~90 s
	readyTimeout = 15 * time.Second
	replyTimeout = 10 * time.Second
	testTimeout  = 3 * time.Minute // one test's browser session
	waitTimeout  = 10 * time.Second
)

var (
	root     string // repository root
	caddyBin string // root/bin/caddy
	chrome   string // the Chromium binary
	authHash string // bcrypt of opsPass for basic_auth
)

// The operator's credentials for the page's basic_auth.
const opsUser, opsPass = "ops", "ops-browser-test-pw"

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	if root, err = filepath.Abs("../.."); err != nil {
		return fatal("%v", err)
	}
	if chrome = os.Getenv("CHROME"); chrome == "" {
		for _, name := range []string{"chromium", "chromium-browser", "google-chrome"} {
			if p, err := exec.LookPath(name); err == nil {
				chrome = p
				break
			}
		}
	}
	var missing []string
	if chrome == "" {
		missing = append(missing, "chromium")
	}
	for _, tool := range []string{"openssl", "python3", "ruby"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, tool)
		}
	}
	if len(missing) > 0 {
		return fatal("missing %s: run scripts/deps.sh (make test does)", strings.Join(missing, ", "))
	}

	if caddyBin = os.Getenv("REALBIN_CADDY"); caddyBin == "" {
		ctx, cancel := context.WithTimeout(context.Background(), buildTimeout)
		build := exec.CommandContext(ctx, filepath.Join(root, "scripts", "build-caddy.sh"))
		build.Dir = root
		build.Stdout, build.Stderr = os.Stderr, os.Stderr
		err = build.Run()
		cancel()
		if err != nil {
			return fatal("scripts/build-caddy.sh: %v", err)
		}
		caddyBin = filepath.Join(root, "bin", "caddy")
	}
	out, err := exec.Command(caddyBin, "hash-password", "--algorithm", "bcrypt", "--bcrypt-cost", "4", "--plaintext", opsPass).Output()
	if err != nil {
		return fatal("caddy hash-password: %v", err)
	}
	authHash = strings.TrimSpace(string(out))
	return m.Run()
}

func fatal(format string, args ...any) int {
	fmt.Fprintf(os.Stderr, "browser: "+format+"\n", args...)
	return 1
}

// handedOut holds every port freePort returned: the app's port is free
// while the app is down and must not be handed to a gateway.
var handedOut = struct {
	sync.Mutex
	ports map[int]bool
}{ports: map[int]bool{}}

// freePort returns a port on 127.0.0.1 that was free a moment ago and that
// no earlier call returned.
func freePort(t *testing.T) int {
	t.Helper()
	handedOut.Lock()
	defer handedOut.Unlock()
	for {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		port := l.Addr().(*net.TCPAddr).Port
		l.Close()
		if !handedOut.ports[port] {
			handedOut.ports[port] = true
			return port
		}
	}
}

// ---- the app behind the gateway ---------------------------------------------

// app is an upstream on a fixed 127.0.0.1 port that can go down (nothing
// listening: connection refused) and come back up on the same port. It
// records each request's X-ReReady-* headers.
type app struct {
	addr   string
	mu     sync.Mutex
	srv    *http.Server
	recs   []http.Header
	status int // what it answers; 0 is 200 {"ok":true}
}

func startApp(t *testing.T) *app {
	t.Helper()
	a := &app{addr: fmt.Sprintf("127.0.0.1:%d", freePort(t))}
	a.up(t)
	t.Cleanup(func() { a.down(t) })
	return a
}

func (a *app) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	io.Copy(io.Discard, r.Body)
	a.mu.Lock()
	a.recs = append(a.recs, r.Header.Clone())
	status := a.status
	a.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	if status != 0 {
		w.WriteHeader(status)
		io.WriteString(w, `{"ok":false}`)
		return
	}
	io.WriteString(w, `{"ok":true}`)
}

// answer makes the app answer status from now on (0: 200).
func (a *app) answer(status int) {
	a.mu.Lock()
	a.status = status
	a.mu.Unlock()
}

// up listens again, retrying briefly while the port is still held.
func (a *app) up(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(readyTimeout)
	for {
		l, err := net.Listen("tcp", a.addr)
		if err == nil {
			srv := &http.Server{Handler: a, ReadHeaderTimeout: replyTimeout}
			go srv.Serve(l)
			a.mu.Lock()
			a.srv = srv
			a.mu.Unlock()
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("app: listening on %s again: %v", a.addr, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// down closes the listener and every connection: the gateway's next dial
// is refused.
func (a *app) down(t *testing.T) {
	t.Helper()
	a.mu.Lock()
	srv := a.srv
	a.srv = nil
	a.mu.Unlock()
	if srv != nil {
		srv.Close()
	}
}

// received reports whether a delivery with this id reached the app.
func (a *app) received(id string) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, h := range a.recs {
		if h.Get("X-Reready-Delivery-Id") == id {
			return true
		}
	}
	return false
}

// ---- the ReReady side ----------------------------------------------------------

// event is a ReReady delivery shaped like the vendor's example payload.
type event struct {
	ID    string
	State string
	Test  bool
}

func uuid() string {
	var b [16]byte
	rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
}

// body is the payload, with < > & written as they are (not \u escapes),
// as a sender would.
func (e event) body() []byte {
	str := func(s string) string {
		var b bytes.Buffer
		enc := json.NewEncoder(&b)
		enc.SetEscapeHTML(false)
		enc.Encode(s)
		return strings.TrimSpace(b.String())
	}
	return []byte(fmt.Sprintf(`{ "device_return_id": %s, "serial_number": null, "state": %s, "test": %t, "ticket_url": null, "url": %s }`,
		str(e.ID), str(e.State), e.Test, str("https://www.reready.co/device_returns/"+e.ID)))
}

// signer is an independent implementation of ReReady's signature, from
// integration/signers.
type signer struct {
	name string
	argv []string
}

var (
	opensslSigner = signer{"openssl", []string{"sh", "sign.sh"}}
	pythonSigner  = signer{"python", []string{"python3", "sign.py"}}
	rubySigner    = signer{"ruby", []string{"ruby", "sign.rb"}}
)

var sigValue = regexp.MustCompile(`^t=[0-9]+,v=[0-9a-f]{128}$`)

// sign returns the X-ReReady-Signature-512 value s makes for body now.
func (s signer) sign(t *testing.T, secret string, body []byte) string {
	t.Helper()
	cmd := exec.Command(s.argv[0], append(s.argv[1:], fmt.Sprint(time.Now().Unix()))...)
	cmd.Dir = filepath.Join(root, "integration", "signers")
	cmd.Env = append(os.Environ(), "REREADY_SIGNING_SECRET="+secret)
	cmd.Stdin = bytes.NewReader(body)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%s signer: %v\n%s", s.name, err, stderr.String())
	}
	v := strings.TrimSpace(string(out))
	if !sigValue.MatchString(v) {
		t.Fatalf("%s signer printed %q, want t=<t>,v=<128 hex>", s.name, v)
	}
	return v
}

// ---- the gateway ---------------------------------------------------------------

// gateway is a running bin/caddy: reready_verify on /hook in front of an
// app, and the page behind basic_auth at /ops/ (handle) and at /strip/
// (handle_path, which strips the prefix).
type gateway struct {
	base, admin string
	secret      string
	cmd         *exec.Cmd
	logs        syncBuffer
	exited      chan struct{}
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startGateway runs bin/caddy in front of a, with the queue's max_age at
// 1s so that an item dies soon, until the test ends.
func startGateway(t *testing.T, a *app, secret string) *gateway {
	t.Helper()
	return startGatewayMaxAge(t, a, secret, "1s")
}

// startGatewayMaxAge is startGateway with the queue's max_age.
func startGatewayMaxAge(t *testing.T, a *app, secret, maxAge string) *gateway {
	t.Helper()
	dir := t.TempDir()
	g := &gateway{
		base:   fmt.Sprintf("http://127.0.0.1:%d", freePort(t)),
		admin:  fmt.Sprintf("127.0.0.1:%d", freePort(t)),
		secret: secret,
	}
	caddyfile := fmt.Sprintf(`{
	admin %s
	persist_config off
	storage file_system %s
}

%s {
	reready_verify /hook {
		secret {env.BROWSER_TEST_SECRET}
		queue {
			max_age %s
		}
	}
	reverse_proxy /hook %s
	handle /ops/* {
		basic_auth {
			%s %s
		}
		reready_ui
	}
	handle_path /strip/* {
		basic_auth {
			%s %s
		}
		reready_ui
	}
}
`, g.admin, filepath.Join(dir, "storage"), g.base, maxAge, a.addr, opsUser, authHash, opsUser, authHash)
	config := filepath.Join(dir, "Caddyfile")
	if err := os.WriteFile(config, []byte(caddyfile), 0o600); err != nil {
		t.Fatal(err)
	}
	g.cmd = exec.Command(caddyBin, "run", "--config", config, "--adapter", "caddyfile")
	g.cmd.Dir = dir
	g.cmd.Env = append(os.Environ(), "BROWSER_TEST_SECRET="+secret,
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"), "XDG_DATA_HOME="+filepath.Join(dir, "data"))
	g.cmd.Stdout, g.cmd.Stderr = &g.logs, &g.logs
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("starting bin/caddy: %v", err)
	}
	g.exited = make(chan struct{})
	go func() { g.cmd.Wait(); close(g.exited) }()
	t.Cleanup(func() {
		g.cmd.Process.Kill()
		<-g.exited
		logs := g.logs.String()
		if strings.Contains(logs, secret) || strings.Contains(logs, opsPass) {
			t.Errorf("caddy's log holds the signing secret or the operator's password")
		}
		if strings.Contains(logs, "panic:") {
			t.Errorf("caddy panicked")
		}
		if t.Failed() {
			t.Logf("caddy output:\n%s", logs)
		}
	})
	deadline := time.Now().Add(readyTimeout)
	for {
		resp, err := http.Get(g.base + "/__ready")
		if err == nil {
			resp.Body.Close()
			return g
		}
		select {
		case <-g.exited:
			t.Fatalf("bin/caddy exited: %v\n%s", g.cmd.ProcessState, g.logs.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("bin/caddy not answering on %s: %v\n%s", g.base, err, g.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// send posts ev signed by s (with the gateway's secret, or another for a
// forgery) and returns the status and the delivery id the gateway gave it.
func (g *gateway) send(t *testing.T, s signer, secret string, ev event) (int, string) {
	t.Helper()
	body := ev.body()
	return g.post(t, body, s.sign(t, secret, body))
}

// post sends a body with a signature value as it is (for replays).
func (g *gateway) post(t *testing.T, body []byte, sig string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, g.base+"/hook", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-ReReady-Signature-512", sig)
	resp, err := (&http.Client{Timeout: replyTimeout}).Do(req)
	if err != nil {
		t.Fatalf("POST /hook: %v", err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("X-Reready-Delivery-Id")
}

// queueItem is an item as the admin API lists it.
type queueItem struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

// queue lists the queue through the admin API (no browser involved).
func (g *gateway) queue(t *testing.T) map[string]string {
	t.Helper()
	resp, err := (&http.Client{Timeout: replyTimeout}).Get("http://" + g.admin + "/reready/queue")
	if err != nil {
		t.Fatalf("admin API: %v", err)
	}
	defer resp.Body.Close()
	var items []queueItem
	if err := json.NewDecoder(resp.Body).Decode(&items); err != nil {
		t.Fatalf("admin API queue: %v", err)
	}
	out := map[string]string{}
	for _, it := range items {
		out[it.ID] = it.Status
	}
	return out
}

// ---- the browser -----------------------------------------------------------------

// newBrowser starts headless Chromium with a fresh profile, sending the
// operator's basic-auth credentials with every request (as a browser that
// signed in does). It fails the test on any script error the pages report.
func newBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	ctx := newBareBrowser(t, width, height)
	auth := base64.StdEncoding.EncodeToString([]byte(opsUser + ":" + opsPass))
	if _, err := chromedp.Call(ctx, network.SetExtraHTTPHeaders, network.SetExtraHTTPHeadersParams{
		Headers: network.Headers{"Authorization": "Basic " + auth},
	}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// newBareBrowser is newBrowser without the credentials: the page must get
// them some other way (in its URL).
func newBareBrowser(t *testing.T, width, height int) context.Context {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(chrome),
		chromedp.NoSandbox,
		chromedp.DisableGPU,
		chromedp.Flag("disable-quic", true),
		chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true),
		chromedp.Flag("no-first-run", true),
		chromedp.UserDataDir(t.TempDir()),
		chromedp.WindowSize(width, height),
	)
	actx, cancelAlloc := chromedp.NewExecAllocator(context.Background(), opts...)
	var mu sync.Mutex
	var problems []string
	ctx, cancelCtx := chromedp.NewContext(actx, chromedp.WithListener(func(ev any) {
		// Runs in the tab's loop: return fast, run no command.
		var msg string
		switch e := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = "script error: " + e.ExceptionDetails.Text
			if e.ExceptionDetails.Exception != nil {
				msg += " " + e.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				msg = "console error:"
				for _, a := range e.Args {
					msg += " " + string(a.Value) + a.Description
				}
			}
		}
		if msg != "" {
			mu.Lock()
			problems = append(problems, msg)
			mu.Unlock()
		}
	}))
	ctx, cancelTimeout := context.WithTimeout(ctx, testTimeout)
	t.Cleanup(func() {
		mu.Lock()
		for _, p := range problems {
			t.Errorf("the browser reported: %s", p)
		}
		mu.Unlock()
		cancelTimeout()
		cancelCtx()
		cancelAlloc()
	})
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("starting Chromium (%s): %v", chrome, err)
	}
	if _, err := chromedp.Call(ctx, network.Enable, network.EnableParams{}); err != nil {
		t.Fatal(err)
	}
	return ctx
}

// do runs actions that return nothing.
func do(t *testing.T, ctx context.Context, actions ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	if err := chromedp.Do(ctx, actions...); err != nil {
		t.Fatal(err)
	}
}

// open loads url and instruments the page.
func open(t *testing.T, ctx context.Context, url string) {
	t.Helper()
	do(t, ctx, chromedp.Navigate(url))
	instrument(t, ctx)
}

// reload reloads the page as open loads it.
func reload(t *testing.T, ctx context.Context) {
	t.Helper()
	do(t, ctx, chromedp.Reload())
	instrument(t, ctx)
}

// instrument watches for CSP violations, stamps rows as they are added,
// and waits for the page's first update.
func instrument(t *testing.T, ctx context.Context) {
	t.Helper()
	evalJS(t, ctx, `window.__csp = []; document.addEventListener('securitypolicyviolation', (e) => window.__csp.push(e.violatedDirective + ' ' + e.blockedURI));
		// Stamp each table row with the time (ms since the epoch) it was added.
		new MutationObserver((list) => { const now = Date.now(); for (const m of list) for (const n of m.addedNodes) if (n.nodeName === 'TR') n.__shownAt = now; })
			.observe(document.querySelector('main'), { childList: true, subtree: true });
		true`, nil)
	waitJS(t, ctx, "the page's first update", `document.getElementById('live').className === 'ok'`)
}

// noViolations fails the test if the page reported a CSP violation.
func noViolations(t *testing.T, ctx context.Context) {
	t.Helper()
	var v []string
	evalJS(t, ctx, `window.__csp || []`, &v)
	if len(v) > 0 {
		t.Errorf("Content-Security-Policy violations: %v", v)
	}
}

// evalJS evaluates js in the page and decodes its JSON value into out
// (when out is not nil).
func evalJS(t *testing.T, ctx context.Context, js string, out any) {
	t.Helper()
	raw, err := chromedp.Run(ctx, chromedp.Evaluate[[]byte](js))
	if err != nil {
		t.Fatalf("evaluating %q: %v", js, err)
	}
	if out != nil {
		if err := json.Unmarshal(raw, out); err != nil {
			t.Fatalf("evaluating %q: decoding %s: %v", js, raw, err)
		}
	}
}

// waitJS polls js (a boolean expression) until it holds, within waitTimeout.
func waitJS(t *testing.T, ctx context.Context, what, js string) time.Duration {
	t.Helper()
	return waitJSFor(t, ctx, what, js, waitTimeout)
}

func waitJSFor(t *testing.T, ctx context.Context, what, js string, timeout time.Duration) time.Duration {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	for {
		ok, err := chromedp.Run(ctx, chromedp.Evaluate[bool](js))
		if err != nil {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		if ok {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			state, _ := chromedp.Run(ctx, chromedp.Evaluate[string](pageStateJS))
			t.Fatalf("waited %s for %s; the page: %s", timeout, what, state)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// pageStateJS describes the page for a failure message: its status line,
// its last message, and when it last asked for deliveries.
const pageStateJS = `JSON.stringify({
	live: document.getElementById('live').textContent,
	message: (document.getElementById('action-msg') || {}).textContent,
	hidden: document.hidden,
	polls: performance.getEntriesByType('resource').filter((e) => e.name.includes('/api/deliveries')).slice(-5)
		.map((e) => Math.round(e.startTime) + '+' + Math.round(e.duration) + 'ms'),
	now: Math.round(performance.now()),
})`

// row is a table row as the page shows it: each cell's text by its label,
// and the row's data attributes.
type row map[string]string

// rowsJS returns the rows of a table as objects of label -> text.
const rowsJS = `((sel) => Array.from(document.querySelectorAll(sel + ' tbody tr:not(.empty)')).map((tr) => {
	const o = Object.assign({}, tr.dataset);
	for (const td of tr.cells) o[td.dataset.label] = td.textContent;
	return o;
}))`

func rows(t *testing.T, ctx context.Context, table string) []row {
	t.Helper()
	var out []row
	evalJS(t, ctx, rowsJS+`(`+jsString(table)+`)`, &out)
	return out
}

// jsString quotes s for JavaScript.
func jsString(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// shownAt is when the first row of table whose cells hold want was added
// to the page (0 if none, or added before open stamped rows).
func shownAt(t *testing.T, ctx context.Context, table string, want map[string]string) time.Time {
	t.Helper()
	w, _ := json.Marshal(want)
	var ms int64
	evalJS(t, ctx, `(() => { const all = Array.from(document.querySelectorAll(`+jsString(table+` tbody tr:not(.empty)`)+`));
		const r = (`+rowsJS+`(`+jsString(table)+`));
		const i = r.findIndex((x) => Object.entries(`+string(w)+`).every(([k, v]) => x[k] === v));
		return i < 0 ? 0 : (all[i].__shownAt || 0); })()`, &ms)
	if ms == 0 {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// rowWhere is a JS expression: does table have a row whose cells hold
// these label: text pairs?
func rowWhere(table string, want map[string]string) string {
	w, _ := json.Marshal(want)
	return `(` + rowsJS + `(` + jsString(table) + `)).some((r) => Object.entries(` + string(w) + `).every(([k, v]) => r[k] === v))`
}

func click(t *testing.T, ctx context.Context, js string) {
	t.Helper()
	var ok bool
	evalJS(t, ctx, `(() => { const b = `+js+`; if (!b) return false; b.click(); return true; })()`, &ok)
	if !ok {
		t.Fatalf("nothing to click: %s", js)
	}
}

// buttonJS finds a button in a table row whose cells hold text.
func buttonJS(table, cellText, label string) string {
	return `Array.from(document.querySelectorAll(` + jsString(table+` tbody tr`) + `)).filter((tr) => Array.from(tr.cells).some((td) => td.textContent === ` +
		jsString(cellText) + `)).flatMap((tr) => Array.from(tr.querySelectorAll('button'))).find((b) => b.textContent === ` + jsString(label) + `)`
}
